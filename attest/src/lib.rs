//! Attestation evidence on the host (being written).
