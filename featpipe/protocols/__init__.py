"""The field's evaluation protocols on frozen features, as a library (numpy in, numbers out).

``knn`` the DINOv2 k-NN classifier (one neighbour search, every k and temperature, few-shot);
``retrieval`` recall@k and mAP@R with a held-out or leave-one-out gallery; ``calibration``
ECE, reliability-diagram data, NLL, Brier score and temperature scaling; ``arrays`` the
parsing of the arrays they all take. ``retrieval`` and ``calibration`` do not import torch.
"""
