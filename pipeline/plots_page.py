"""The page template `dvc plots show` fills, with Vega, Vega-Lite and Vega-Embed inlined, so the
charts draw on a machine without internet (DVC's own page loads them from a CDN).

The libraries come from vl-convert-python's offline bundle (`vl_convert.javascript_bundle()`).
`scripts/setup.sh` writes the template to .dvc/plots_template.html, which .dvc/config names as
`plots.html_template`; run `python -m pipeline.plots_page` to write it again.
"""

from __future__ import annotations

import argparse

from pipeline.atomic import atomic_file

DEFAULT = ".dvc/plots_template.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots</title>
    <script>
/* Vega, Vega-Lite and Vega-Embed: vl-convert-python %(version)s's bundle */
%(bundle)s
    </script>
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template() -> str:
    """DVC fills {plot_divs} and {refresh_tag}; without a {scripts} placeholder it adds no CDN tags."""
    import vl_convert

    # The default snippet puts vegaEmbed, vegaLite and vega on `window`, where DVC's divs call them.
    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    return PAGE % {"version": vl_convert.__version__, "bundle": bundle}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.plots_page", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=DEFAULT)
    args = parser.parse_args(argv)
    with atomic_file(args.out) as tmp:
        tmp.write_text(template())
    print(f"plots_page: {args.out}")


if __name__ == "__main__":
    main()
