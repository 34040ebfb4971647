"""Exercise 4 (respace): which of the T = 1000 training timesteps a `steps`-step sampler visits.
Replaces space_timesteps in diffusion.py (Diffusion.respace calls it; every sampler uses respace).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k respace
"""


def space_timesteps(T, steps, rule="ddim"):
    """The sorted list of original timesteps (Python ints in [0, T)) that a `steps`-step sampler visits.

    A DDIM trained with T = 1000 can sample in 10, 20, 50 or 100 steps (Diff-AE §5.5, Table 2 and 4):
    it jumps between a subset of the timesteps, and each jump is one ddim_step (Exercise 3) from
    alphabar of one kept timestep to alphabar of the next. Which subset decides the result, so we follow
    the official Diff-AE code exactly:

    rule="ddim" (the official DDIM sampler, guided-diffusion's "ddimN"): the smallest integer stride s
        (try s = 1, 2, ..., T) with len(range(0, T, s)) == steps; return list(range(0, T, s)).
        Example: T = 1000, steps = 10 -> [0, 100, 200, ..., 900]. If no integer stride gives exactly
        `steps` timesteps (say steps = 600 of 1000), fall back to the "even" rule below.
    rule="even" (guided-diffusion's space_timesteps(T, [steps]), used for DDPM): the timesteps
        round(i * (T - 1) / (steps - 1)) for i = 0, ..., steps - 1 (Python's round), sorted without
        duplicates; a stride of 1 when steps == 1 (that is, [0]).
        Example: T = 1000, steps = 10 -> [0, 111, 222, ..., 999].
    Errors: raise ValueError when steps is not in [1, T], or rule is neither "ddim" nor "even".
    """
    raise NotImplementedError("exercise respace: write the official timestep respacing")
