"""compat/ is the one source of the runtime profiles: the README's support table is generated
from it, and the project's declared ranges must admit every profile it claims."""

import re
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "compat"))

from run_matrix import load_profiles, support_table  # noqa: E402


def test_readme_support_table_is_generated_from_compat():
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- compat-table:start -->\n(.*?)\n<!-- compat-table:end -->", readme, re.S)
    assert found, "README.md lost its compat-table markers"
    assert found.group(1) == support_table(load_profiles()), (
        "README support table differs from compat/: paste the output of `python compat/run_matrix.py --table`"
    )


def test_every_profile_is_inside_the_declared_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {}
    for requirement in project["dependencies"]:
        name, spec = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^]]*\])?(.*)", requirement).groups()
        ranges[name.lower()] = SpecifierSet(spec)
    spark = re.match(r"pyspark\[connect\](.*)", project["optional-dependencies"]["spark"][0]).group(1)
    ranges["pyspark"] = SpecifierSet(spark)
    python = SpecifierSet(project["requires-python"])
    profiles = load_profiles()
    assert {p.name for p in profiles} >= {"15.4", "16.4", "17.3", "18", "latest"}
    for profile in profiles:
        assert python.contains(f"{profile.python}.0"), (profile.name, "python", profile.python)
        for name, version in profile.pins.items():
            if name in ranges:
                assert ranges[name].contains(version), (profile.name, name, version, str(ranges[name]))
