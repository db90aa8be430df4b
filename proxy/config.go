package proxy

import (
	"errors"
	"fmt"
)

// Defaults are Segment's own limits, so an SDK that respects Segment's API
// never hits a stricter one here.
const (
	DefaultMaxEventBytes   = 32 << 10  // --max-event-bytes
	DefaultMaxRequestBytes = 500 << 10 // --max-request-bytes
	DefaultMaxBatchEvents  = 2500      // --max-batch-events
)

// Config is the proxy's part of the command line. cmd registers the flags;
// the names in Validate's messages are theirs.
type Config struct {
	// WriteKeys, when not empty, are the only write keys accepted (--write-key,
	// repeatable); a request with a missing or unknown key is answered 401.
	// Empty accepts any key, including none.
	WriteKeys []string
	// Strict answers 400 to a request holding any spec-invalid event and
	// stores nothing of it (--strict). False (the default) stores the valid
	// events, dead-letters the invalid ones and answers 200, as Segment does.
	Strict bool
	// MaxEventBytes bounds one event as the client sent it, merged with the
	// batch-level context/integrations (--max-event-bytes). Default
	// DefaultMaxEventBytes; must be > 0.
	MaxEventBytes int
	// MaxRequestBytes bounds a request body, after gzip inflation
	// (--max-request-bytes). Default DefaultMaxRequestBytes; must be > 0.
	MaxRequestBytes int
	// MaxBatchEvents bounds the events of one batch (--max-batch-events).
	// Default DefaultMaxBatchEvents; must be > 0.
	MaxBatchEvents int
	// AdminToken, when set, lets a non-loopback client use the dead-letter
	// admin endpoints with "Authorization: Bearer <AdminToken>"
	// (--admin-token). Empty allows them from loopback addresses only.
	AdminToken string
}

// DefaultConfig returns the Config that `spillway run` uses with no flags.
func DefaultConfig() Config {
	return Config{
		MaxEventBytes:   DefaultMaxEventBytes,
		MaxRequestBytes: DefaultMaxRequestBytes,
		MaxBatchEvents:  DefaultMaxBatchEvents,
	}
}

// Validate reports every invalid field, each naming its flag.
func (c Config) Validate() error {
	var errs []error
	for _, k := range c.WriteKeys {
		if k == "" {
			errs = append(errs, errors.New("--write-key must not be empty"))
			break
		}
	}
	if c.MaxEventBytes <= 0 {
		errs = append(errs, errors.New("--max-event-bytes must be > 0"))
	}
	if c.MaxRequestBytes <= 0 {
		errs = append(errs, errors.New("--max-request-bytes must be > 0"))
	}
	if c.MaxBatchEvents <= 0 {
		errs = append(errs, errors.New("--max-batch-events must be > 0"))
	}
	if c.MaxEventBytes > 0 && c.MaxRequestBytes > 0 && c.MaxEventBytes > c.MaxRequestBytes {
		errs = append(errs, fmt.Errorf("--max-event-bytes (%d) must be <= --max-request-bytes (%d)", c.MaxEventBytes, c.MaxRequestBytes))
	}
	return errors.Join(errs...)
}
