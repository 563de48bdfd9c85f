"""Column-selector adapters: cLA, random-cLA and their chains c3LA and random-c3LA.

A is a selector: dW = s * B A with A = rows of the identity, so A x = x[..., idx] is gathered and
never multiplied as a dense matrix. Only B (n x r) trains.
"""

from .base import ADAPTER, SELECT, Method, first_columns, random_columns, random_window, register, window

CLA = register(Method("cla", ADAPTER, "cLA", link=SELECT, select=first_columns))
RCLA = register(
    Method(
        "rcla", ADAPTER, "random-cLA", link=SELECT, select=random_columns,
        notes="columns drawn from the run seed, per matrix, and stored in the checkpoint.",
    )
)
C3LA = register(
    Method(
        "c3la", ADAPTER, "c3LA", link=SELECT, chain=True, select=window,
        notes="link t: columns [t r, (t+1) r); at each boundary B is merged, frozen and a new B = 0 starts.",
    )
)
RC3LA = register(
    Method("rc3la", ADAPTER, "random-c3LA", link=SELECT, chain=True, select=random_window)
)
