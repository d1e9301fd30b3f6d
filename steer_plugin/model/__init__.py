"""The model: loading it, finding its decoder blocks and layers, adding ``alpha x vector`` to the residual stream."""
