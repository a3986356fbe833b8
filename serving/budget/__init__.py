"""Budgets: from a request's budget to its plan (``resolve``), calibration's control table and
what its rows cost on recent traffic (``table``), and the controller that keeps each operating
point on its cost when traffic changes (``control``)."""
