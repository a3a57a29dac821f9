"""How a registry reference is split (alignflow.export.registry_parts)."""

from alignflow.export import registry_parts


def test_alias_and_version_references_split_into_name_alias_version():
    assert registry_parts("models:/alignflow-policy@champion") == (
        "alignflow-policy",
        "champion",
        None,
    )
    assert registry_parts("models:/alignflow-policy/3") == ("alignflow-policy", None, "3")
