"""What the tests share: the data they write, the commands they run, the servers they start."""
