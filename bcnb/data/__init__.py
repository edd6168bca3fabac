"""Stage 1, the data: the layouts of real data sets, the scan for bad files, decoding images,
the built-in dataset, stain normalisation and augmentation, the task's labels, downloads,
loading a data set, the patient-level split (folds included) and the input pipeline."""
