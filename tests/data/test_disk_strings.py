from openhermes.data.disk_strings import DiskStrings


def test_strings_come_back_as_written_while_more_are_appended(tmp_path):
    names = DiskStrings(tmp_path)
    written = []
    for i in range(2000):
        text = f"data/{'ünï' if i % 3 else 'c'}ode.jsonl:{i + 1}" + ("\ud800" if i == 7 else "")  # a lone surrogate too
        names.append(text)
        written.append(text)
        if i % 97 == 0:  # reads between appends see every string so far
            assert names[i] == text and names[0] == written[0]
    assert len(names) == 2000
    assert [names[i] for i in range(2000)] == written
    assert names[-1] == written[-1] and names[-2000] == written[0]
    assert list(tmp_path.iterdir()) == []  # an unnamed file: nothing is left behind
    names.close()
