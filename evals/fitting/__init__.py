"""The fitting of shipped artifacts: the probe (and its refit from human labels), the
calibration, the second opinion's bands, and the probe by depth."""
