"""Reading CT (NIfTI, NRRD, MHA, DICOM series), dataset sources, preprocessing recipes and their cache."""
