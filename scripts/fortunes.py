"""Lay out Debian's fortune-cookie texts as a text classification data set, offline.

    python scripts/fortunes.py languages data/fortunes/languages     # 8 languages, class folders
    python scripts/fortunes.py topics data/fortunes/topics            # 14 English topics, class folders
    python scripts/fortunes.py topics data/fortunes/topics.csv        # the same as one CSV table

`languages`: every fortune of the packages fortunes and fortunes-min (en), fortunes-de, -es, -it,
-ru, -pl, -cs (Czech; its Slovak file and its `off` files left out) and -br (pt): ~91,000 texts.
`topics`: the English package's files on one topic each (computers, linux, law, ...): ~4,700 texts,
a harder task. A fortune file holds texts separated by lines of `%`; each distinct text is one
example of its class (repeats within a class are kept once).

The packages are pinned: the installed versions and the laid-out texts (a sha256 per class) must be
the ones below, so the data set is the same on every machine. A folder is written as
`<dest>/train/<class>/<n>.txt` (prepare splits test and validation off: `data.text_folder.test: null`);
a `.csv` destination is one table with columns `text` and `label`. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = {  # Debian 12 (bookworm)
    "fortunes": "1:1.99.1-7.3",
    "fortunes-min": "1:1.99.1-7.3",
    "fortunes-de": "0.35-1",
    "fortunes-es": "1.36",
    "fortunes-it": "1.99-4.1",
    "fortunes-ru": "1.52-3.1",
    "fortunes-pl": "0.0.20130525-3",
    "fortunes-cs": "2.0.9-1.1",
    "fortunes-br": "20220821",
}
LANGUAGES = {
    "en": ["fortunes", "fortunes-min"],
    "de": ["fortunes-de"],
    "es": ["fortunes-es"],
    "it": ["fortunes-it"],
    "ru": ["fortunes-ru"],
    "pl": ["fortunes-pl"],
    "cs": ["fortunes-cs"],
    "pt": ["fortunes-br"],
}
TOPICS = ["computers", "linux", "law", "medicine", "food", "sports", "science", "politics", "education", "drugs",
          "love", "work", "pets", "kids"]  # fmt: skip
LEFT_OUT = re.compile(r"/(off|sk|cz)/")  # offensive files; Slovak; the Czech files' second copy
FORTUNES = Path("/usr/share/games/fortunes")
# sha256 of each class's texts (each followed by a NUL byte, in the order they are written) and their count.
CHECKSUMS = {
    "languages": {
        "en": (15134, "a61cac5e84b7702140b1216beff26258b8aca3b23405d2fe655af6d183f7ab4f"),
        "de": (18651, "7a946c534ff32fb5a1e99f6f7b584aa83eed4a0e7597e9050d8cee20f6122e2b"),
        "es": (10763, "fe809fe7e8e1f0b0cebecae83a94bc3c3ae9524b06c5fe3f4c7bb77894e2ee34"),
        "it": (8505, "a51759ab314e4873053252c1a91731124e3f3b3b250536c73d2e728b5ccf04f9"),
        "ru": (20478, "6ff579e906edc76ccd73bf2f7a3b1f347fd01149a0440b4b1349cca3775d7762"),
        "pl": (7922, "47c67213d380cc6e5357e98cc6b31018efb918e57b1dfd85941f59c9223840ac"),
        "cs": (7310, "9854f7e7e7e072e601ff3b773f82eccbf1f2acc98bc9029ac6085c29348bce76"),
        "pt": (2505, "c49b8869b9f21cdf54d51b3fbca0e76580f0fa4b845c256ca435de2666c1a765"),
    },
    "topics": {
        "computers": (1051, "bdf52ce8fc53e2890682806d67a76c2859635969fde83c2af91de7888c65d2b6"),
        "linux": (336, "747a6cdcd8360b8d6ea27fe8e93b8927fca68485223608bcfd1e3cd735f703e3"),
        "law": (206, "c2cd4ba6c7e5e6efae18570d60987aa40774332623e318aeb82e676fc84b06e6"),
        "medicine": (74, "4483ccabdad65c870c8f6ccc53ffba0bf0fd9b5d789f745b0b87c4ce74161e50"),
        "food": (198, "150913220d884b3860b802a5b85c018d0197c05beb4fcc779695e5625b873a63"),
        "sports": (147, "8578ad743a690e6e033e4d995c95ebaa3cfc55cebf52cc545867fe0c11d143e6"),
        "science": (625, "210657c5d07f63f4a35325e98e432ba635ccabb81a811eb38626ac77e8edf76b"),
        "politics": (703, "e962552ffeffcb03f0eca02867431f8d0802e0ef76256a6b9807f610d5fcc969"),
        "education": (203, "f2b12cd2164f3cab827dbbed1874434cff30feb5f5dcd2451d255bb5aa2cf989"),
        "drugs": (208, "44aaa14dfd50641f4d19052a3ac69faf8eac352af95ac9f48bf69f10a96b65a2"),
        "love": (150, "3565819a2e6e5c273194878755cb3f331abdebdd56b8d0d201ccc80d8cfe1bd1"),
        "work": (630, "5963af5801080e4c8dad24826bfece401f25f0dea3601e402351901e6667da54"),
        "pets": (52, "0ad0dd1e7193689d8959fee9d7d1c868be60b2862d6c25736ea89c3301535faf"),
        "kids": (150, "b8f24e90675e2a69927be0f1e61c1c144ecb794f10486ac57a46c3f3dae6eff6"),
    },
}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def installed_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def check_packages(packages: list[str]) -> None:
    wrong = {p: installed_version(p) for p in packages if installed_version(p) != PACKAGES[p]}
    if wrong:
        missing = [p for p, v in wrong.items() if v is None]
        if missing:
            fail(f"Debian packages missing: {' '.join(missing)} (apt-get install {' '.join(missing)})")
        package, version = next(iter(wrong.items()))
        fail(f"{package} {version} is installed; this data set is pinned to {PACKAGES[package]}")


def package_files(package: str) -> list[Path]:
    """The package's fortune files (not their .dat indexes, nor the .u8 links to them), sorted."""
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout.split("\n")
    files = []
    for name in listed:
        path = Path(name)
        if (str(path).startswith(str(FORTUNES)) and path.is_file() and not path.is_symlink()
                and path.suffix not in (".dat", ".u8") and not path.name.endswith("-pre")
                and not LEFT_OUT.search(name)):  # fmt: skip
            files.append(path)
    return sorted(files)


def texts_of(path: Path) -> list[str]:
    """The fortunes of one file: texts separated by lines holding `%` alone. (Some .u8 links of the
    Polish package are empty: the file itself is UTF-8.)"""
    text = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    return [t.strip("\n") for t in re.split(r"^%\n", text + "\n", flags=re.M) if t.strip()]


def classes(task: str) -> dict[str, list[str]]:
    if task == "languages":
        check_packages([p for packages in LANGUAGES.values() for p in packages])
        sources = {lang: [f for p in packages for f in package_files(p)] for lang, packages in LANGUAGES.items()}
    else:
        check_packages(["fortunes"])
        sources = {topic: [FORTUNES / topic] for topic in TOPICS}
    return {name: list(dict.fromkeys(t for f in files for t in texts_of(f))) for name, files in sources.items()}


def class_checksum(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def check_texts(task: str, data: dict[str, list[str]]) -> None:
    for name, texts in data.items():
        expected = CHECKSUMS[task].get(name)
        if expected is not None and (len(texts), class_checksum(texts)) != expected:
            fail(f"{task}/{name}: {len(texts)} texts with sha256 {class_checksum(texts)}, expected {expected}")


def write_folders(data: dict[str, list[str]], dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    for name, texts in data.items():
        folder = tmp / "train" / name
        folder.mkdir(parents=True)
        for i, text in enumerate(texts):
            (folder / f"{i:05d}.txt").write_text(text + "\n", encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def write_table(data: dict[str, list[str]], dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for name, texts in data.items():
            writer.writerows([text, name] for text in texts)
    os.replace(tmp, dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("languages", "topics"))
    parser.add_argument("dest", type=Path, help="a folder to write class folders into, or a .csv file")
    parser.add_argument("--print-checksums", action="store_true", help="print each class's count and sha256")
    args = parser.parse_args(argv)
    data = classes(args.task)
    if args.print_checksums:
        for name, texts in data.items():
            print(f'        "{name}": ({len(texts)}, "{class_checksum(texts)}"),')
        return
    check_texts(args.task, data)
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    (write_table if args.dest.suffix == ".csv" else write_folders)(data, args.dest)
    counts = ", ".join(f"{name} {len(texts)}" for name, texts in data.items())
    print(f"fortunes: {sum(map(len, data.values()))} texts in {len(data)} classes ({counts}) in {args.dest}")


if __name__ == "__main__":
    main()
