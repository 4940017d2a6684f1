"""Your own parts for looplab: a network and an optimiser, as a user's package would hold them.

Run from this folder (it is the launch directory, so the package is importable):

    looplab-train hydra.searchpath=[file://conf] experiment=digits_cnn
"""
