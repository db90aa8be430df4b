package forwarders

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spillwayhq/spillway/internal/privacy"
	"github.com/spillwayhq/spillway/internal/segment"
)

// Destination kinds, chosen by the URL scheme.
const (
	KindSegment = "segment" // segment+https://host, segment+http://host
	KindWebhook = "webhook" // https://..., http://...
	KindStdout  = "stdout"  // stdout://
	KindFile    = "file"    // file:///path
	// KindArchive, s3://BUCKET/PREFIX, is in archive.go.
)

// Webhook body formats (?format=).
const (
	FormatJSON    = "json"    // a JSON array of events (the default)
	FormatNDJSON  = "ndjson"  // one event per line
	FormatSegment = "segment" // {"batch":[...],"sentAt":"..."}
)

// Destination is one parsed --destination NAME=URL.
type Destination struct {
	Name string // [a-z0-9_-]+, unique; the metrics label and the spool consumer
	Kind string // KindSegment, KindWebhook, KindKafka, KindStdout or KindFile
	// URL is where the kind delivers, without spillway's own parameters: the
	// webhook URL (its other query parameters kept), the Segment API base
	// (https://host, /v1/batch is appended), the file path; empty for stdout.
	URL string

	BatchEvents int
	BatchBytes  int
	Flush       time.Duration // zero sends what is read without waiting
	Concurrency int
	Timeout     time.Duration
	BackoffMin  time.Duration
	BackoffMax  time.Duration
	MaxAge      time.Duration

	// Filters on the event's "type" and "event" fields; an empty include
	// list includes everything. Events filtered out are acknowledged and
	// not delivered. The type lists hold Segment's types in lower case.
	IncludeTypes, ExcludeTypes   []string
	IncludeEvents, ExcludeEvents []string

	// WriteKey (segment) replaces every event's own write key. Never logged.
	WriteKey string
	// Format (webhook) is FormatJSON, FormatNDJSON or FormatSegment.
	Format string
	// Output (stdout) receives the lines; nil means os.Stdout. Not settable
	// from the URL: it is for tests and embedding.
	Output io.Writer
	// Kafka (kafka) holds the producer's options; see kafka.go.
	Kafka KafkaOptions
	// Archive (s3) holds the bucket and store options; see archive.go.
	Archive ArchiveOptions
	// Fallback (?fallback=NAME, any kind but s3) names the archive that
	// takes the events still undelivered here when the shutdown drain
	// ends; empty for none.
	Fallback string
	// TLSCA (segment, webhook over https) is a PEM file of CA certificates
	// trusted besides the system's (?tls_ca=PATH), for a destination with
	// a private or self-signed certificate. Certificates are always
	// verified unless Insecure.
	TLSCA string
	// Lanes (?lanes=write_key|off) gives each write key a lane of its own
	// (see lanes.go): LanesWriteKey, LanesOff, or empty for the kind's
	// default, which is write_key for a segment destination without a
	// write_key of its own and off for the others.
	Lanes string
	// Insecure (?insecure=true) skips verifying the destination's TLS
	// certificate: anyone on the path can then read and change the events.
	Insecure bool

	// DropFields and HashFields (?drop=, ?hash=, comma lists of paths, see
	// internal/privacy) are removed from each event sent here, or replaced
	// by their hex HMAC-SHA256 under HashKey; IP (?ip=keep|truncate|drop)
	// is what happens to context.ip. Other destinations are not affected,
	// and the global flags have been applied already, before storing.
	DropFields, HashFields []privacy.Path
	IP                     privacy.IPMode
	// HashKey is the key of --hash-key-file, set by the caller: HashFields
	// needs it. Never logged.
	HashKey []byte
}

// Privacy compiles the destination's privacy rules; nil when it has none.
func (d Destination) Privacy() (*privacy.Rules, error) {
	r, err := privacy.New(d.DropFields, d.HashFields, d.IP, d.HashKey)
	if errors.Is(err, privacy.ErrNoKey) {
		return nil, fmt.Errorf("destination %s: hash= needs --hash-key-file", d.Name)
	}
	return r, err
}

// String describes d without secrets (write key, URL password).
func (d Destination) String() string {
	u := d.URL
	if p, err := url.Parse(u); err == nil {
		u = p.Redacted()
	}
	return d.Name + "=" + d.Kind + " " + u
}

// LogValue keeps write keys and URL passwords out of logs.
func (d Destination) LogValue() slog.Value {
	return slog.StringValue(d.String())
}

// options are d's numeric options, as Defaults holds them.
func (d Destination) options() Defaults {
	return Defaults{BatchEvents: d.BatchEvents, BatchBytes: d.BatchBytes, Flush: d.Flush, Concurrency: d.Concurrency,
		Timeout: d.Timeout, BackoffMin: d.BackoffMin, BackoffMax: d.BackoffMax, MaxAge: d.MaxAge}
}

func (d *Destination) setOptions(o Defaults) {
	d.BatchEvents, d.BatchBytes, d.Flush, d.Concurrency = o.BatchEvents, o.BatchBytes, o.Flush, o.Concurrency
	d.Timeout, d.BackoffMin, d.BackoffMax, d.MaxAge = o.Timeout, o.BackoffMin, o.BackoffMax, o.MaxAge
}

var nameRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// ParseDestinations parses every spec and checks that names are unique.
func ParseDestinations(specs []string, d Defaults) ([]Destination, error) {
	out := make([]Destination, 0, len(specs))
	for _, s := range specs {
		dest, err := ParseDestination(s, d)
		if err != nil {
			return nil, err
		}
		out = append(out, dest)
	}
	if err := checkUnique(out); err != nil {
		return nil, err
	}
	if err := checkFallbacks(out); err != nil {
		return nil, err
	}
	return out, nil
}

func checkUnique(dests []Destination) error {
	seen := make(map[string]bool, len(dests))
	for _, d := range dests {
		if seen[d.Name] {
			return fmt.Errorf("destination %s: name used twice", d.Name)
		}
		seen[d.Name] = true
	}
	return nil
}

// ParseDestination parses NAME=URL. The scheme picks the kind; the query
// parameters batch_events, batch_bytes, flush, concurrency, timeout,
// backoff_min, backoff_max, max_age, include_types, exclude_types,
// include_events and exclude_events override d, plus the privacy rules
// drop, hash and ip, lanes, write_key (segment),
// format (webhook) and the kafka kind's own (applyKafkaParam). Any other parameter is an error, except on a
// webhook, whose URL keeps it: it belongs to the endpoint. It also reads
// the tls_ca file and checks that a file destination's directory exists, so
// that every mistake in a URL is reported before anything starts.
func ParseDestination(spec string, d Defaults) (Destination, error) {
	name, raw, ok := strings.Cut(spec, "=")
	if !ok {
		// Not echoed: a URL may hold a password.
		return Destination{}, errors.New("want NAME=URL, e.g. segment=segment+https://api.segment.io")
	}
	if !nameRE.MatchString(name) {
		return Destination{}, fmt.Errorf("destination %q: name must match [a-z0-9_-]+", name)
	}
	dest, err := parseURL(name, raw, d)
	if err != nil {
		return Destination{}, fmt.Errorf("destination %s: %w", name, err)
	}
	return dest, nil
}

// parseURL is ParseDestination past the name: its errors do not name the
// destination.
func parseURL(name, raw string, d Defaults) (Destination, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the URL, which may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Destination{}, fmt.Errorf("parse URL: %v", err)
	}
	dest := Destination{Name: name}
	dest.setOptions(d.withDefaults())
	if err := dest.setKind(u); err != nil {
		return Destination{}, err
	}
	kept, err := dest.applyParams(u.RawQuery)
	if err != nil {
		return Destination{}, err
	}
	u.RawQuery, u.ForceQuery = kept, false
	if err := dest.setTarget(u); err != nil {
		return Destination{}, err
	}
	if err := checkBackoff(dest.BackoffMin, dest.BackoffMax, paramName); err != nil {
		return Destination{}, err
	}
	return dest, nil
}

// setKind picks the kind by u's scheme, and the kind's own defaults.
func (dest *Destination) setKind(u *url.URL) error {
	switch scheme := strings.ToLower(u.Scheme); scheme {
	case "segment+https", "segment+http":
		dest.Kind = KindSegment
		u.Scheme = strings.TrimPrefix(scheme, "segment+")
	case "https", "http":
		dest.Kind = KindWebhook
		dest.Format = FormatJSON
	case "stdout":
		dest.Kind = KindStdout
	case "file":
		dest.Kind = KindFile
	case "s3":
		dest.setArchiveKind()
	case "kafka":
		dest.Kind = KindKafka
		// One batch in flight keeps each key's events in order across
		// batches; ?concurrency= trades that for throughput.
		dest.Concurrency = 1
	default:
		return fmt.Errorf("unsupported scheme %q (want segment+https, segment+http, https, http, kafka, s3, stdout or file)", u.Scheme)
	}
	return nil
}

// setTarget sets where the kind delivers from u, whose parameters are
// applied already, and checks what only makes sense together.
func (dest *Destination) setTarget(u *url.URL) error {
	switch dest.Kind {
	case KindSegment, KindWebhook:
		return dest.setHTTPTarget(u)
	case KindStdout:
		if u.Host != "" || (u.Path != "" && u.Path != "/") || u.Opaque != "" {
			return errors.New("stdout takes no host or path, write stdout://")
		}
	case KindFile:
		return dest.setFileTarget(u)
	case KindKafka:
		return dest.parseKafkaURL(u)
	case KindArchive:
		return dest.setArchiveTarget(u)
	}
	return nil
}

func (dest *Destination) setHTTPTarget(u *url.URL) error {
	switch {
	case u.Host == "":
		return errors.New("URL has no host")
	case (dest.TLSCA != "" || dest.Insecure) && u.Scheme != "https":
		return errors.New("tls_ca and insecure need an https URL")
	case dest.TLSCA != "" && dest.Insecure:
		return errors.New("tls_ca and insecure=true exclude each other")
	}
	if dest.TLSCA != "" {
		if _, err := loadRootCAs(dest.TLSCA); err != nil {
			return fmt.Errorf("tls_ca: %v", err)
		}
	}
	if dest.Kind == KindSegment && u.User != nil {
		return errors.New("a segment URL takes the write key as ?write_key=, not in the URL")
	}
	u.Fragment, u.RawFragment = "", ""
	if dest.Kind == KindSegment {
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawPath = ""
	}
	dest.URL = u.String()
	return nil
}

func (dest *Destination) setFileTarget(u *url.URL) error {
	path := u.Path
	switch {
	case u.Opaque != "": // file:events.ndjson
		path = u.Opaque
	case u.Host != "" && u.Host != "localhost": // file://events.ndjson, a relative path
		path = u.Host + u.Path
	}
	if path == "" {
		return errors.New("file URL has no path, write file:///path/events.ndjson")
	}
	if err := checkFilePath(path); err != nil {
		return err
	}
	dest.URL = path
	return nil
}

// applyParams sets the options from a raw query and returns what is left of
// it for the endpoint, in its original order and encoding.
func (dest *Destination) applyParams(rawQuery string) (string, error) {
	if rawQuery == "" {
		return "", nil
	}
	var kept []string
	seen := map[string]bool{}
	for _, piece := range strings.Split(rawQuery, "&") {
		if piece == "" {
			continue
		}
		rk, rv, _ := strings.Cut(piece, "=")
		key, err := url.QueryUnescape(rk)
		if err != nil {
			return "", fmt.Errorf("bad query parameter %q", rk)
		}
		val, err := url.QueryUnescape(rv)
		if err != nil {
			return "", fmt.Errorf("%s: bad escaping", key)
		}
		handled, err := dest.applyParam(key, val)
		if err != nil {
			return "", fmt.Errorf("%s: %w", key, err)
		}
		if !handled {
			if dest.Kind != KindWebhook {
				return "", fmt.Errorf("unknown parameter %q", key)
			}
			kept = append(kept, piece)
			continue
		}
		if seen[key] {
			return "", fmt.Errorf("%s: given twice", key)
		}
		seen[key] = true
	}
	return strings.Join(kept, "&"), nil
}

// applyNumber sets one numeric option; false when key is not one.
func (dest *Destination) applyNumber(key, val string) (bool, error) {
	o := dest.options()
	for _, f := range o.fields() {
		if f.s.param == key {
			err := f.parse(val)
			dest.setOptions(o)
			return true, err
		}
	}
	return false, nil
}

// applyParam sets one option; false when key is not one of ours.
func (dest *Destination) applyParam(key, val string) (bool, error) {
	if ok, err := dest.applyNumber(key, val); ok {
		return true, err
	}
	var err error
	switch key {
	case "include_types":
		dest.IncludeTypes, err = parseTypes(val)
	case "exclude_types":
		dest.ExcludeTypes, err = parseTypes(val)
	case "include_events":
		dest.IncludeEvents, err = parseList(val)
	case "exclude_events":
		dest.ExcludeEvents, err = parseList(val)
	case "drop":
		dest.DropFields, err = privacy.ParsePaths(val)
	case "hash":
		dest.HashFields, err = privacy.ParsePaths(val)
	case "ip":
		dest.IP, err = privacy.ParseIPMode(val)
	case "write_key":
		if dest.Kind != KindSegment {
			return true, errors.New("only a segment destination takes a write key")
		}
		if val == "" {
			return true, errors.New("must not be empty")
		}
		dest.WriteKey = val
	case "tls_ca", "insecure":
		if dest.Kind != KindSegment && dest.Kind != KindWebhook {
			return true, errors.New("only an https or segment+https destination takes it")
		}
		if key == "tls_ca" {
			if val == "" {
				return true, errors.New("must name a PEM file")
			}
			dest.TLSCA = val
		} else if dest.Insecure, err = strconv.ParseBool(val); err != nil {
			return true, fmt.Errorf("want true or false, got %q", val)
		}
	case "lanes":
		dest.Lanes, err = parseLanes(dest.Kind, val)
	case "fallback":
		if !nameRE.MatchString(val) {
			return true, errors.New("must name a destination")
		}
		dest.Fallback = val
	case "format":
		if dest.Kind != KindWebhook {
			return true, errors.New("only an http(s) destination takes a format")
		}
		switch val {
		case FormatJSON, FormatNDJSON, FormatSegment:
			dest.Format = val
		default:
			return true, fmt.Errorf("want json, ndjson or segment, got %q", val)
		}
	default:
		switch dest.Kind {
		case KindKafka:
			return dest.applyKafkaParam(key, val)
		case KindArchive:
			return dest.applyArchiveParam(key, val)
		}
		return false, nil
	}
	return true, err
}

func parseList(s string) ([]string, error) {
	parts := strings.Split(s, ",")
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("empty item in %q", s)
		}
		out = append(out, p)
	}
	return out, nil
}

// eventTypes are Segment's event types, the values include_types and
// exclude_types take. The proxy stores no event of another type (it
// dead-letters it as invalid), so a filter naming one would match nothing,
// silently: it is refused instead.
var eventTypes = segment.Types()

// parseTypes parses a type filter. Segment's types are lower case, and the
// proxy stores no other spelling, but someone writing Track means track:
// the list is taken in any case and kept in lower case, so that matching
// an event stays an exact comparison.
func parseTypes(s string) ([]string, error) {
	types, err := parseList(s)
	if err != nil {
		return nil, err
	}
	for i, t := range types {
		types[i] = strings.ToLower(t)
		if !slices.Contains(eventTypes, types[i]) {
			return nil, fmt.Errorf("unknown event type %q (want %s)", t, strings.Join(eventTypes, ", "))
		}
	}
	return types, nil
}

// eventTypesOnly reports whether every one of types is one of eventTypes,
// in lower case, as parseTypes leaves them.
func eventTypesOnly(types []string) bool {
	return !slices.ContainsFunc(types, func(t string) bool { return !slices.Contains(eventTypes, t) })
}

// loadRootCAs returns the system's CAs plus those of the PEM file at path.
func loadRootCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err // names the path and the operation
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// checkFilePath finds what would keep a file destination from opening at
// start-up, without creating the file: a bad URL is a usage error,
// reported with the others before anything starts.
func checkFilePath(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("file %s: directory %s does not exist", path, dir)
	case err != nil:
		return fmt.Errorf("file %s: %w", path, err)
	case !fi.IsDir():
		return fmt.Errorf("file %s: %s is not a directory", path, dir)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("file %s is a directory", path)
	}
	return nil
}
