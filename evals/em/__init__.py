"""The Emergent Misalignment benchmark (``conscience eval em``): the paper's questions answered
and judged, and its report."""
