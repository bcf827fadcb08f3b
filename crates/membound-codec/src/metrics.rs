//! Error and size metrics: SQNR, MSE, max error, bits/weight, compression, kurtosis.
