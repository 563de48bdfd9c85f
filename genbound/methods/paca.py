"""PaCA (Woo et al. 2025): fine-tune r randomly chosen columns of W itself.

Stored as the trainable column block P (n x r), initialised to W0[:, idx]; the update is
dW[:, idx] = P - W0[:, idx] with scale 1. With the first r columns and alpha = r this follows
the same trajectory as cLA under Adam without weight decay.
"""

from .base import ADAPTER, COLUMNS, Method, random_columns, register

PACA = register(Method("paca", ADAPTER, "PaCA", link=COLUMNS, select=random_columns, unit_scale=True))
