package ingress

// Fingerprint is fingerprint for the external tests, which forge
// idempotency records as the ingress writes them.
var Fingerprint = fingerprint
