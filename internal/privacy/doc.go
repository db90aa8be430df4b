// Package privacy applies spillway's privacy rules to an event's JSON:
// fields dropped, fields replaced by their keyed hash, and context.ip kept,
// truncated or dropped. The proxy applies the global rules (--drop-field,
// --hash-field, --ip) before an event is stored, so that what they remove
// never reaches the disk; a dispatcher applies its destination's own
// (drop=, hash=, ip=) before sending.
//
// A path is dotted keys, "traits.email"; a key may hold '*', any run of
// characters within one key, so "properties.*_token" is every key of
// properties that ends in _token. Paths go through objects only, never
// into arrays, and a key holding '.' cannot be named.
//
// A hash is hex HMAC-SHA256 under the key of --hash-key-file, of a string's
// text or of any other value's JSON text, so that the same user hashes
// alike on every pod and no dictionary of emails reverses it.
//
// It imports nothing of spillway's but internal/segment, so that both the
// proxy and the forwarders use it without bending the dependencies (cmd ->
// proxy, forwarders -> spool).
package privacy
