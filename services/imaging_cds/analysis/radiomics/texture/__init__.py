"""Texture matrices and their features: GLCM, GLRLM, GLSZM, GLDZM, NGTDM and NGLDM (IBSI 1, sections 3.6-3.11).

Each family module takes a :class:`GreyImage` (grey levels 1..Ng inside the intensity mask, 0 outside, cropped
to the ROI and padded by one empty voxel) and the requested dimensions, and returns ``{feature key: value}``.
"""
