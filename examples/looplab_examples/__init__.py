"""Your own parts for looplab: a network, an optimiser and a data set, as a user's package
would hold them.

Run from this folder (it is the launch directory, so the package is importable):

    looplab-train hydra.searchpath=[file://conf] experiment=digits_cnn
    looplab-train hydra.searchpath=[file://conf] dataset=moons model.width=16
"""
