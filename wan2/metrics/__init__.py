"""Video metrics: Frechet distance, FVD (I3D), CLIPSIM, VBench-style flicker and the in-domain RankJump encoder
(the reader's trajectory / colour verdicts are scored by the one judge, wan2.eval.judge).

No Lightning imports here: these functions run on plain arrays/tensors. Networks that need pretrained weights
(I3D, CLIP) take local paths and fail clearly without them; tests use randomly initialised networks saved in the
same formats, and a number from a random network is never an FVD or a CLIPScore.
"""
