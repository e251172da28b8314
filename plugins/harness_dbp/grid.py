"""Configuration tables that registration reads (no torch here): the reference's grid of
trade-off constants and the DRAW presets."""

REFERENCE_C_GRID = (0.0, *(2.0 ** (-20 + 40 * i / 49) for i in range(50)))
"""0 and 50 values from 2^-20 to 2^20, evenly spaced in the exponent (``np.logspace(-20, 20, 50, base=2)``)."""

DRAW_PRESETS = {
    # The paper names DRAW1, DRAW16 and DRAW16 with attention without their sizes; the number is
    # taken for the count of steps T, with the reference's LSTMs of 256 units. The latent per step
    # keeps the reference's concatenated code of 256 numbers for T = 16 (16 x 16); DRAW1 has the
    # reference's 32 per step. Attention uses the reference's 12 x 12 windows.
    "draw1": {"steps": 1, "hidden": 256, "latent": 32, "attention": False, "window": 12},
    "draw16": {"steps": 16, "hidden": 256, "latent": 16, "attention": False, "window": 12},
    "draw16-attention": {"steps": 16, "hidden": 256, "latent": 16, "attention": True, "window": 12},
    # Seconds on a CPU, for tests: the same code paths.
    "small": {"steps": 2, "hidden": 16, "latent": 4, "attention": True, "window": 3},
}
