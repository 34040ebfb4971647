"""Run a project script with your exercise functions swapped in.

    STUDENT=exercises/mine python exercises/run.py NAME[,NAME...] SCRIPT [ARGS...]

e.g.  STUDENT=exercises/mine python exercises/run.py slerp sample.py --ckpt runs/class/ckpt.pt interpolate

installs your functions for the named exercises (see exercises/student.py), then runs SCRIPT
(sample.py, train.py, exercises/show.py) exactly as `python SCRIPT ARGS` would. Without STUDENT
the project's own functions run: the reference, to compare with.
"""
import os
import runpy
import sys

import student

if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    names, script, args = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]
    unknown = [n for n in names if n not in student.EXERCISES]
    if unknown:
        print(f"error: no exercise {', '.join(unknown)}; the exercises are: {', '.join(student.EXERCISES)}", file=sys.stderr)
        sys.exit(2)
    for name in names:
        try:
            done = student.install(name)
        except (KeyError, FileNotFoundError, AttributeError, SyntaxError, ImportError) as e:
            print(f"error: exercise {name}: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
            sys.exit(2)
        if done:
            print(f"[exercise {name}] using your {', '.join(done)} from {os.environ['STUDENT']}", flush=True)
        else:
            print(f"[exercise {name}] STUDENT is not set: running the project's reference code", flush=True)
    if not os.path.exists(script) and os.path.exists(os.path.join(student.ROOT, script)):
        script = os.path.join(student.ROOT, script)
    if not os.path.isfile(script):
        print(f"error: no script {script}; name one of sample.py, train.py, exercises/show.py", file=sys.stderr)
        sys.exit(2)
    sys.argv = [script] + args
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
