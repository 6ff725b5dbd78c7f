"""``orthodiffusion check-anatomy`` on the real DESS and its axial reformat: pictures, the checks table, a plane the
model does not segment, and one clear error for a missing series."""
from __future__ import annotations

import csv

from bundle_helpers import make_tiny_bundle
from OrthoDiffusionLib.cli import main


def test_check_anatomy_writes_pictures_and_the_checks_of_each_series(shared_data, tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "tiny.odbundle", segmentation_planes=("sagittal",))
    out = tmp_path / "out"
    rc = main(["check-anatomy", "--model", str(bundle), "--series", str(shared_data / "dess_sagittal_dicom"),
               "--reformat", "axial", "--out", str(out), "--progress", "none"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert (out / "dess_sagittal_dicom_sagittal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dess_sagittal_dicom_axial (axial): not segmented by this model" in text
    with open(out / "checks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # a random tiny model segments no knee: the table has the checks that ran, and the first one fails
    assert rows and {r["series"] for r in rows} == {"dess_sagittal_dicom"} and rows[0]["check"] == "present"
    assert rows[0]["passed"] == "0" and "FAIL  present" in text
    assert main(["check-anatomy", "--model", str(bundle), "--series", str(shared_data / "dess_sagittal_dicom"),
                 "--out", str(tmp_path / "strict"), "--progress", "none", "--strict"]) == 1
    capsys.readouterr()
    assert main(["check-anatomy", "--model", str(bundle), "--series", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "x"), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0] and not (tmp_path / "x").exists()
