"""`gradloop report`: one self-contained HTML page comparing runs (collect.py reads them, charts.py
draws their curves as SVG, page.py lays the page out)."""
