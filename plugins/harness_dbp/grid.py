"""The reference's grid of trade-off constants (no torch here: registration reads it)."""

REFERENCE_C_GRID = (0.0, *(2.0 ** (-20 + 40 * i / 49) for i in range(50)))
"""0 and 50 values from 2^-20 to 2^20, evenly spaced in the exponent (``np.logspace(-20, 20, 50, base=2)``)."""
