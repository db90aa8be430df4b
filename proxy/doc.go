// Package proxy owns spillway's HTTP surface: the Segment-compatible
// ingestion endpoints (/v1/track ... /v1/batch and analytics.js's short
// paths), write-key auth, body decoding and limits, spec validation,
// enrichment, and the health, metrics and admin endpoints.
//
// Guarantees:
//
//   - A 200 is written only after Spool.Append returned nil for every event
//     of the request, so "200" means "durable as the spool's --sync says".
//     Any other answer means nothing of the request was stored, so an SDK
//     that retries on non-2xx loses nothing and duplicates nothing.
//   - Answers follow Segment's HTTP Tracking API byte for byte
//     ({"success":true}), because what the SDKs do with them decides
//     whether events survive. Errors carry a machine-readable "code".
//   - An event that breaks the spec inside a well-formed request, or an
//     event of a batch over Config.MaxEventBytes, is never dropped
//     silently and never costs the other events: it is stored as a dead
//     letter (reason "invalid" or "too_large") in the same Append as the
//     good events, counted, and listed in the 200's body. With
//     Config.Strict the request is refused with 400 instead.
//   - Request bodies, inflated gzip included, never grow past
//     Config.MaxRequestBytes in memory: a gzip bomb is cut off at the limit.
//   - A stored event carries no writeKey and no sentAt: the key travels in
//     spool.Event.WriteKey and forwarders stamp sentAt when they send.
//     Write keys are never logged and are masked in admin listings.
//
// The package knows the spool only through the Spool interface and never
// imports forwarders. What it knows of Segment's API (event types, paths,
// spec rules, field names, the time format) comes from internal/segment,
// which forwarders read too.
package proxy
