"""From texts to a steering vector: recording hidden states, statistics, analysis, building, controls, interop."""
