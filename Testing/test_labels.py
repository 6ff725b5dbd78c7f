from OrthoDiffusionLib import labels


def test_knee_diagnosis_labels_match_method():
    names = [d.name for d in labels.diagnosis_labels("knee")]
    assert names == ["ACL injury", "PCL injury", "medial meniscus tear", "lateral meniscus tear", "MCL injury",
                     "LCL injury", "patellar dislocation", "joint effusion"]
    assert len(labels.diagnosis_labels("ankle")) == 4
    assert len(labels.diagnosis_labels("shoulder")) == 7
    assert [d.name for d in labels.diagnosis_labels("ankle")][2] == "Achilles tendon rupture"


def test_knee_structures_values_and_planes():
    st = labels.knee_structures()
    assert [s.value for s in st] == list(range(1, 12))
    assert [s.name for s in st][:3] == ["Femur", "Tibia", "Patella"]
    coronal = {s.key for s in labels.knee_structures("coronal")}
    assert len(coronal) == 9 and "patella" not in coronal and "patellar_cartilage" not in coronal
    assert len({s.color for s in st}) == 11  # distinct colours


def test_color_table_lines():
    lines = labels.color_table_lines()
    assert lines[1].startswith("0 Background")
    assert lines[2] == "1 Femur 241 214 145 255"
    assert len(lines) == 13


def test_unknown_anatomy():
    import pytest

    with pytest.raises(KeyError, match="hip"):
        labels.diagnosis_labels("hip")
