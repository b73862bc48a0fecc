"""Compiler flags shared by every kernel.

FAST_MATH lets LLVM reorder float32 sums (reassoc), fuse multiply-adds (contract), use
reciprocals (arcp) and ignore the sign of zero (nsz): what vectorising a dot product needs. It
leaves out Numba's `fastmath=True` members nnan and ninf, under which LLVM may assume that no
value is NaN or infinite. The attention kernel masks future keys with -inf, and a bad input must
still show up as NaN rather than as some finite number.
"""

FAST_MATH = {"reassoc", "contract", "arcp", "nsz"}
