"""``vast-pipeline report OUT``: one static HTML page of an output's figures and a gallery of clips.

``stats.py`` streams the committed ledger and manifests into the numbers behind every figure,
``gallery.py`` samples clips by key hash and seeks only their members out of the tars,
``figures.py`` draws the plots with matplotlib, and ``page.py`` writes ``OUT/report/index.html``
with the sampled media next to it. Only committed data is read, so a report can be made while a
run is still adding commits.
"""
