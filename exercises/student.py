"""Swap a student's functions into the project: the one mechanism behind every exercise check.

Each exercise blanks out one or a few functions of the project. exercises/blank/<file> holds them
with their signature, a docstring saying what to write, and `raise NotImplementedError`. A
student copies that file into a folder of their own (exercises/mine/) and fills it in. Then

    STUDENT=exercises/mine python -m pytest tests/exercises -k NAME     # the check
    STUDENT=exercises/mine python exercises/run.py NAME sample.py ...   # the figure, made by their code

install(NAME) replaces the project's functions (a module function or a class's method) by the
student's for the duration of the check, so the project's own samplers, training loop and
sample.py run on top of them. Without STUDENT nothing is replaced: the project's code is the
reference solution, and the same checks must pass on it.
"""
import importlib
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# name (what `pytest -k` selects) -> (the file in exercises/blank/, [(module, class or None, function)])
EXERCISES = {
    "q_sample":    ("e01_q_sample.py",    [("diffusion", "Diffusion", "q_sample")]),
    "simple_loss": ("e02_simple_loss.py", [("diffusion", "Diffusion", "loss")]),
    "ddim_step":   ("e03_ddim_step.py",   [("diffusion", "Diffusion", "predict_x0"),
                                           ("diffusion", "Diffusion", "ddim_step")]),
    "respace":     ("e04_respace.py",     [("diffusion", None, "space_timesteps")]),
    "adagn":       ("e05_adagn.py",       [("nn", None, "ada_group_norm"), ("nn", "ResBlock", "forward")]),
    "two_codes":   ("e06_two_codes.py",   [("diffae", "DiffAE", "encode_stochastic"),
                                           ("diffae", "DiffAE", "decode")]),
    "slerp":       ("e07_slerp.py",       [("diffusion", None, "slerp")]),
    "latent_ddim": ("e08_latent_ddim.py", [("latent_ddim", "LatentDDIM", "set_stats"),
                                           ("latent_ddim", "LatentDDIM", "normalize"),
                                           ("latent_ddim", "LatentDDIM", "denormalize"),
                                           ("latent_ddim", "LatentDDIM", "loss")]),
    "direction":   ("e09_direction.py",   [("classifier", None, "attribute_direction"),
                                           ("classifier", None, "manipulate")]),
    "fewshot":     ("e10_fewshot.py",     [("classifier", None, "fit_pu"), ("classifier", None, "rejection_sample")]),
    "mean_shift":  ("e11_mean_shift.py",  [("pdae", None, "_mean_shift_coef_on"), ("pdae", None, "ddim_shift_coef")]),
    "lambda":      ("e12_lambda.py",      [("pdae", None, "loss_weights")]),
    "gap":         ("e13_gap.py",         [("diffusion", "Diffusion", "posterior_mean"),
                                           ("pdae", None, "posterior_mean_gap")]),
}


def folder():
    """$STUDENT as an absolute path (a relative one is taken from the repository root), or None."""
    f = os.environ.get("STUDENT")
    if not f:
        return None
    return f if os.path.isabs(f) else os.path.join(ROOT, f)


def load(name, where):
    """The student's module for exercise `name`, freshly executed from `where`/<its file>."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    file = EXERCISES[name][0]
    if not os.path.isdir(where):
        raise FileNotFoundError(f"STUDENT={os.environ.get('STUDENT')} is not a folder; make it and start from the blank: "
                                f"mkdir -p {os.environ.get('STUDENT')} && cp exercises/blank/{file} {os.environ.get('STUDENT')}/")
    path = os.path.join(where, file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"STUDENT={os.environ.get('STUDENT')} has no {file}; start from the blank: "
                                f"cp exercises/blank/{file} {os.path.relpath(where, ROOT)}/")
    spec = importlib.util.spec_from_file_location(f"student_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install(name, set_attr=setattr):
    """Put the student's functions for exercise `name` in place of the project's (no-op without STUDENT).

    set_attr is pytest's monkeypatch.setattr in the checks (undone after each test), plain setattr
    in exercises/run.py. Returns the list of replaced names.
    """
    where = folder()
    if where is None:
        return []
    mine = load(name, where)
    done = []
    for module, owner, attr in EXERCISES[name][1]:
        if not hasattr(mine, attr):
            raise AttributeError(f"{mine.__file__} must define {attr} (see exercises/blank/{EXERCISES[name][0]})")
        target = importlib.import_module(module)
        if owner is not None:
            target = getattr(target, owner)
        set_attr(target, attr, getattr(mine, attr))
        done.append(f"{module}.{owner + '.' if owner else ''}{attr}")
    return done
