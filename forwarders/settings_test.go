package forwarders

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestDefaultsValidateNamesTheFlag(t *testing.T) {
	d := Defaults{BatchBytes: 1 << 20, Concurrency: 8, MaxAge: 30 * time.Minute}
	if err := d.Validate(); err != nil {
		t.Error(err)
	}
	d.BackoffMax = time.Millisecond
	if err := d.Validate(); err == nil || err.Error() != "--backoff-max 1ms is below --backoff-min 500ms" {
		t.Errorf("Validate() = %v", err)
	}
}

// TestEachSettingHasOneMessage: a setting's values are stated once, and
// the flag, the URL parameter and a destination built by hand all say so.
func TestEachSettingHasOneMessage(t *testing.T) {
	flags := Defaults{BatchEvents: 500, BatchBytes: 1 << 20, Flush: time.Second, Concurrency: 4, Timeout: time.Second,
		BackoffMin: time.Second, BackoffMax: time.Minute, MaxAge: time.Hour}
	tests := []struct {
		scenario string
		set      func(d *Defaults)
		spec     string // the same value as a URL parameter
		flag     string // Validate's error, and ValidateFlags' unless strict says otherwise
		param    string
		strict   string
	}{
		{"too many events per batch", func(d *Defaults) { d.BatchEvents = math.MaxInt32 + 1 }, "batch_events=2147483648",
			"--batch-max-events must be in 1..2147483647", `batch_events: want an integer in 1..2147483647, got "2147483648"`, ""},
		{"a batch over 2GiB", func(d *Defaults) { d.BatchBytes = 3 << 30 }, "batch_bytes=3GiB",
			"--batch-max-bytes must be in 1..2147483647 bytes", `batch_bytes: must be in 1..2147483647 bytes, got "3GiB"`, ""},
		{"a negative flush", func(d *Defaults) { d.Flush = -time.Second }, "flush=-1s",
			"--flush-interval must be >= 0", `flush: must be >= 0, got "-1s"`,
			"--flush-interval must be > 0 (a destination's ?flush=0 sends without waiting)"},
		{"too much concurrency", func(d *Defaults) { d.Concurrency = 257 }, "concurrency=257",
			"--concurrency must be in 1..256", `concurrency: want an integer in 1..256, got "257"`, ""},
		{"a negative timeout", func(d *Defaults) { d.Timeout = -time.Second }, "timeout=-1s",
			"--request-timeout must be > 0", `timeout: must be > 0, got "-1s"`, ""},
		{"a negative first retry wait", func(d *Defaults) { d.BackoffMin = -time.Second }, "backoff_min=-1s",
			"--backoff-min must be > 0", `backoff_min: must be > 0, got "-1s"`, ""},
		{"a longest retry wait below the first", func(d *Defaults) { d.BackoffMax = time.Millisecond }, "backoff_max=1ms&backoff_min=1s",
			"--backoff-max 1ms is below --backoff-min 1s", `backoff_max 1ms is below backoff_min 1s`, ""},
		{"a negative max age", func(d *Defaults) { d.MaxAge = -time.Hour }, "max_age=-1h",
			"--max-age must be > 0", `max_age: must be > 0, got "-1h"`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			d := flags
			tt.set(&d)
			if err := d.Validate(); err == nil || err.Error() != tt.flag {
				t.Errorf("Validate() = %v, want %q", err, tt.flag)
			}
			if tt.strict == "" {
				tt.strict = tt.flag
			}
			if err := d.ValidateFlags(); err == nil || err.Error() != tt.strict {
				t.Errorf("ValidateFlags() = %v, want %q", err, tt.strict)
			}
			_, err := ParseDestination("s=stdout://?"+tt.spec, Defaults{})
			if err == nil || err.Error() != "destination s: "+tt.param {
				t.Errorf("ParseDestination = %v, want %q", err, "destination s: "+tt.param)
			}
		})
	}
}

// TestValidateFlagsRefusesZero: a zero flag would be read as the default,
// which is not what someone writing --max-age 0 means.
func TestValidateFlagsRefusesZero(t *testing.T) {
	if err := (Defaults{}).Validate(); err != nil {
		t.Errorf("Validate() of zeros, the defaults: %v", err)
	}
	err := (Defaults{}).ValidateFlags()
	want := []string{
		"--batch-max-events must be in 1..2147483647",
		"--batch-max-bytes must be in 1..2147483647 bytes",
		"--flush-interval must be > 0 (a destination's ?flush=0 sends without waiting)",
		"--concurrency must be in 1..256",
		"--request-timeout must be > 0",
		"--backoff-min must be > 0",
		"--backoff-max must be > 0",
		"--max-age must be > 0",
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Errorf("ValidateFlags() of zeros = %v, want\n%s", err, strings.Join(want, "\n"))
	}
}

func TestADestinationBuiltByHandIsCheckedAsParsed(t *testing.T) {
	d := parse(t, "d=stdout://")
	d.Concurrency = 1000
	want := "destination d: options out of range (build it with ParseDestination): concurrency must be in 1..256"
	if err := d.validate(); err == nil || err.Error() != want {
		t.Errorf("validate() = %v, want %q", err, want)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"500KB": 500_000, "32KiB": 32 << 10, "1GiB": 1 << 30, "4 MiB": 4 << 20, "10": 10} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]string{"lots": `want a size such as 500KiB, got "lots"`, "10EiB": `size "10EiB" is too large`} {
		if _, err := ParseByteSize(in); err == nil || err.Error() != want {
			t.Errorf("ParseByteSize(%q) = %v, want %q", in, err, want)
		}
	}
}

func TestKafkaLingerIsAtMostAMinute(t *testing.T) {
	_, err := ParseDestination("k=kafka://b:9092/t?linger=2m", Defaults{})
	if want := `destination k: linger: must be at most 1m, got "2m"`; err == nil || err.Error() != want {
		t.Errorf("ParseDestination = %v, want %q", err, want)
	}
}
