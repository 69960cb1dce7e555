"""``medlsam-lists``: list files from folders of images and labels."""

from __future__ import annotations

from medlsam.cli.lists import main


def test_lists_from_image_and_label_folders(tmp_path, capsys):
    for folder in ("img", "lab"):
        (tmp_path / folder).mkdir()
        for case in ("a", "b", "c"):
            (tmp_path / folder / f"{case}.nii.gz").write_bytes(b"x")
    out = tmp_path / "lists"
    assert (
        main(
            [
                "--images",
                str(tmp_path / "img"),
                "--labels",
                str(tmp_path / "lab"),
                "--supports",
                "b",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from medlsam.io import read_path_list

    assert [p.name for p in read_path_list(out / "support_image.txt")] == ["b.nii.gz"]
    assert [p.name for p in read_path_list(out / "query_label.txt")] == ["a.nii.gz", "c.nii.gz"]
    assert (
        main(
            [
                "--images",
                str(tmp_path / "img"),
                "--labels",
                str(tmp_path / "lab"),
                "--supports",
                "zz",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zz" in err[-1]


def test_missing_folder_is_one_line(tmp_path, capsys):
    code = main(
        [
            "--images",
            str(tmp_path / "nope"),
            "--labels",
            str(tmp_path),
            "--supports",
            "a",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "nope" in err[0] and "not a folder" in err[0]
