"""`import gradloop` loads what training needs and nothing else; the rest comes on first use."""

import json
import subprocess
import sys

import gradloop as gl

PROBE = """
import json, sys
import gradloop as gl
before = sorted(m for m in sys.modules if m.startswith(("gradloop.doctor.", "gradloop.cli", "matplotlib", "rich", "sklearn", "pydantic")))
report_type = gl.DoctorReport.__name__
import gradloop.doctor.run  # a submodule of the doctor, imported by name, leaves gl.doctor the function
print(json.dumps({"before": before, "doctor": callable(gl.doctor), "report": report_type,
                  "loaded": "gradloop.doctor.run" in sys.modules, "still": callable(gl.doctor) and callable(gl.lr_find)}))
"""


def test_import_gradloop_leaves_the_doctor_and_the_rim_unloaded() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["before"] == []
    assert seen["doctor"] and seen["report"] == "DoctorReport" and seen["loaded"] and seen["still"]


def test_every_public_name_is_importable() -> None:
    for name in gl.__all__:
        assert getattr(gl, name) is not None, name
    assert callable(gl.doctor) and callable(gl.lr_find)
