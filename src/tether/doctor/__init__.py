"""`tether doctor`: everything a session needs, checked without creating anything."""
