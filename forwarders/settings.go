package forwarders

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Defaults of the per-destination options, used where neither the URL nor a
// global flag sets one.
const (
	DefaultBatchEvents = 500
	DefaultBatchBytes  = 500_000 // Segment's limit per batch request: 500 KB
	DefaultFlush       = time.Second
	DefaultConcurrency = 4
	DefaultTimeout     = 10 * time.Second
	DefaultBackoffMin  = 500 * time.Millisecond
	DefaultBackoffMax  = 60 * time.Second
	DefaultMaxAge      = 4 * time.Hour // Centrifuge's retry horizon
)

// Defaults holds the global values of the per-destination options (the
// flags), which a destination's URL parameters override. A zero field means
// the package default constant.
type Defaults struct {
	BatchEvents int           // most events in one batch; default 500
	BatchBytes  int           // most bytes of events in one batch; default 500KiB
	Flush       time.Duration // longest wait before a partial batch goes; default 1s
	Concurrency int           // batches in flight; default 4
	Timeout     time.Duration // per request; default 10s
	BackoffMin  time.Duration // first retry wait; default 500ms
	BackoffMax  time.Duration // longest retry wait, and the misconfigured retry period; default 60s
	MaxAge      time.Duration // an event not delivered by then is dead-lettered; default 4h
}

// Validate checks the global values, naming the flag at fault. A zero
// field stands for its default, as everywhere in Defaults.
func (d Defaults) Validate() error {
	return d.withDefaults().check(flagName, false)
}

// ValidateFlags is Validate for values read from the flags, whose defaults
// are never zero: a zero there was written by someone who meant something
// other than the default (--concurrency 0, --max-age 0s), so it is refused
// where Validate would read it as the default.
func (d Defaults) ValidateFlags() error {
	return d.check(flagName, true)
}

func (d Defaults) withDefaults() Defaults {
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setD := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	set(&d.BatchEvents, DefaultBatchEvents)
	set(&d.BatchBytes, DefaultBatchBytes)
	setD(&d.Flush, DefaultFlush)
	set(&d.Concurrency, DefaultConcurrency)
	setD(&d.Timeout, DefaultTimeout)
	setD(&d.BackoffMin, DefaultBackoffMin)
	setD(&d.BackoffMax, DefaultBackoffMax)
	setD(&d.MaxAge, DefaultMaxAge)
	return d
}

// check checks every value against its setting, naming each by name, and
// then that backoff_max is not below backoff_min. noZero refuses zeros.
func (d Defaults) check(name func(setting) string, noZero bool) error {
	var errs []error
	for _, f := range d.fields() {
		s := f.s
		if noZero {
			s = s.nonZero()
		}
		if err := s.check(f.get()); err != nil {
			errs = append(errs, fmt.Errorf("%s %w", name(s), err))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, checkBackoff(d.BackoffMin, d.BackoffMax, name))
	}
	return errors.Join(errs...)
}

// fields are d's values with their settings.
func (d *Defaults) fields() []field {
	return []field{
		{batchEventsSetting, &d.BatchEvents}, {batchBytesSetting, &d.BatchBytes},
		{flushSetting, &d.Flush}, {concurrencySetting, &d.Concurrency},
		{timeoutSetting, &d.Timeout}, {backoffMinSetting, &d.BackoffMin},
		{backoffMaxSetting, &d.BackoffMax}, {maxAgeSetting, &d.MaxAge},
	}
}

// field is where a setting's value is kept: an *int or a *time.Duration.
type field struct {
	s setting
	p any
}

func (f field) get() int64 {
	if p, ok := f.p.(*int); ok {
		return int64(*p)
	}
	return int64(*f.p.(*time.Duration))
}

// parse parses a URL parameter's value into the field.
func (f field) parse(val string) error {
	n, err := f.s.parse(val)
	if err != nil {
		return err
	}
	if p, ok := f.p.(*int); ok {
		*p = int(n)
	} else {
		*f.p.(*time.Duration) = time.Duration(n)
	}
	return nil
}

// checkBackoff refuses a longest retry wait below the first.
func checkBackoff(minWait, maxWait time.Duration, name func(setting) string) error {
	if maxWait < minWait {
		return fmt.Errorf("%s %v is below %s %v", name(backoffMaxSetting), maxWait, name(backoffMinSetting), minWait)
	}
	return nil
}

// maxConcurrency bounds concurrency: each batch in flight holds its memory.
const maxConcurrency = 256

// setting is one numeric option of a destination: its URL parameter, the
// flag of its global default, and the values it takes, stated once for
// both so that every message about it says the same.
type setting struct {
	param string // the URL parameter
	flag  string // the flag, without dashes; "" for a kind's own option
	unit  unit
	// min and max bound the values, inclusive: a count, bytes, or a
	// duration in nanoseconds.
	min, max int64
	// zeroNote says what a zero means where it is allowed, for the
	// message of a flag, which takes none (see ValidateFlags).
	zeroNote string
}

type unit int

const (
	count unit = iota
	size
	duration
)

const unbounded = math.MaxInt64

var (
	batchEventsSetting = setting{param: "batch_events", flag: "batch-max-events", unit: count, min: 1, max: math.MaxInt32}
	batchBytesSetting  = setting{param: "batch_bytes", flag: "batch-max-bytes", unit: size, min: 1, max: math.MaxInt32}
	flushSetting       = setting{param: "flush", flag: "flush-interval", unit: duration, min: 0, max: unbounded,
		zeroNote: "a destination's ?flush=0 sends without waiting"}
	concurrencySetting = setting{param: "concurrency", flag: "concurrency", unit: count, min: 1, max: maxConcurrency}
	timeoutSetting     = setting{param: "timeout", flag: "request-timeout", unit: duration, min: 1, max: unbounded}
	backoffMinSetting  = setting{param: "backoff_min", flag: "backoff-min", unit: duration, min: 1, max: unbounded}
	backoffMaxSetting  = setting{param: "backoff_max", flag: "backoff-max", unit: duration, min: 1, max: unbounded}
	maxAgeSetting      = setting{param: "max_age", flag: "max-age", unit: duration, min: 1, max: unbounded}
	lingerSetting      = setting{param: "linger", unit: duration, min: 0, max: int64(time.Minute)}
)

func flagName(s setting) string  { return "--" + s.flag }
func paramName(s setting) string { return s.param }

// nonZero is s without zero, for a flag.
func (s setting) nonZero() setting {
	s.min = max(s.min, 1)
	return s
}

// rule says which values s takes: "in 1..256", "> 0", ">= 0", "at most 1m".
func (s setting) rule() string {
	var r string
	switch {
	case s.max == unbounded && s.min == 1:
		r = "> 0"
	case s.max == unbounded && s.min == 0:
		r = ">= 0"
	case s.min == 0:
		r = "at most " + s.format(s.max)
	default:
		r = "in " + s.format(s.min) + ".." + s.format(s.max)
	}
	if s.unit == size {
		r += " bytes"
	}
	if s.zeroNote != "" && s.min > 0 {
		r += " (" + s.zeroNote + ")"
	}
	return r
}

func (s setting) format(n int64) string {
	if s.unit != duration {
		return strconv.FormatInt(n, 10)
	}
	d := time.Duration(n).String()
	// 1m, not 1m0s.
	for _, zero := range []string{"0s", "0m"} {
		if d != zero {
			d = strings.TrimSuffix(d, zero)
		}
	}
	return d
}

// check refuses n outside the setting's values.
func (s setting) check(n int64) error {
	if n < s.min || n > s.max {
		return errors.New("must be " + s.rule())
	}
	return nil
}

// parse reads a URL parameter's value.
func (s setting) parse(val string) (int64, error) {
	var (
		n   int64
		err error
	)
	switch s.unit {
	case count:
		// Not an integer and out of range are one mistake: say what is
		// wanted.
		if n, err = strconv.ParseInt(val, 10, 64); err != nil || s.check(n) != nil {
			return 0, fmt.Errorf("want an integer %s, got %q", s.rule(), val)
		}
		return n, nil
	case size:
		n, err = ParseByteSize(val)
	case duration:
		var d time.Duration
		d, err = time.ParseDuration(val)
		if err != nil {
			err = fmt.Errorf("want a duration such as 500ms or 4h, got %q", val)
		}
		n = int64(d)
	}
	if err != nil {
		return 0, err
	}
	if err := s.check(n); err != nil {
		return 0, fmt.Errorf("%w, got %q", err, val)
	}
	return n, nil
}

// ParseByteSize reads a size such as 500KB, 32KiB or 1GiB (decimal and
// binary units, as go-humanize reads them) into bytes: the form of every
// flag and URL parameter that takes a size. Each setting bounds its own.
func ParseByteSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("want a size such as 500KiB, got %q", s)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(n), nil
}
