package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/forwarders"
)

// replayBatchEvents and replayBatchBytes keep each request within
// Segment's limits (2500 events, 500 KB).
const (
	replayBatchEvents = 500
	replayBatchBytes  = 400_000 // one event past it still fits in 500 KB
)

type replayConfig struct {
	from, to, resume, writeKey, destination, undelivered string
	since, until                                         time.Time
	types, events                                        []string
	dryRun                                               bool
}

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("spillway replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c replayConfig
	var since, until, types, events string
	fs.StringVar(&c.from, "from", "", "the archive: s3://BUCKET/PREFIX[?endpoint=...&tls=false&path_style=true&region=...] or file:///PATH (a file or a directory of .ndjson and .ndjson.gz files)")
	fs.StringVar(&c.to, "to", "http://127.0.0.1:8080", "a running spillway, or any Segment-compatible API: events are posted to its /v1/import")
	fs.StringVar(&since, "since", "", "replay events received at or after this RFC 3339 time")
	fs.StringVar(&until, "until", "", "replay events received before this RFC 3339 time")
	fs.StringVar(&types, "type", "", "replay only these event types (comma list)")
	fs.StringVar(&events, "event", "", "replay only these track event names (comma list)")
	fs.StringVar(&c.destination, "destination", "", "route the events to this destination only (through their integrations object)")
	fs.StringVar(&c.undelivered, "undelivered", "", "replay what destination NAME handed to the archive at shutdown (PREFIX/undelivered/NAME)")
	fs.StringVar(&c.resume, "resume", "", "record progress in FILE, and skip what it says was sent")
	fs.StringVar(&c.writeKey, "write-key", "", "write key for events archived without one (a file destination's)")
	fs.BoolVar(&c.dryRun, "dry-run", false, "count what would be sent, send nothing")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "spillway replay: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected arguments %q", fs.Args())
	}
	if c.from == "" {
		return usageErr("--from is required")
	}
	var err error
	if c.since, err = parseReplayTime(since); err != nil {
		return usageErr("--since: %v", err)
	}
	if c.until, err = parseReplayTime(until); err != nil {
		return usageErr("--until: %v", err)
	}
	if !c.since.IsZero() && !c.until.IsZero() && !c.until.After(c.since) {
		return usageErr("--until must be after --since")
	}
	if types != "" {
		c.types = strings.Split(types, ",")
	}
	if events != "" {
		c.events = strings.Split(events, ",")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	src, err := openReplaySource(c.from, c.undelivered)
	if err != nil {
		return usageErr("--from: %v", err)
	}
	r := &replayer{c: c, src: src, stderr: stderr, client: &http.Client{Timeout: 30 * time.Second}, start: time.Now()}
	if err := r.run(ctx); err != nil {
		fmt.Fprintf(stderr, "spillway replay: %v\n", err)
		r.report(true)
		return 1
	}
	r.report(true)
	return 0
}

func parseReplayTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339, s)
}

// replaySource lists an archive's objects in order and opens them.
type replaySource interface {
	// list returns the objects that may hold events received in
	// [since, until) (zero for unbounded), in the order they were
	// written.
	list(ctx context.Context, since, until time.Time) ([]string, error)
	open(ctx context.Context, name string) (io.ReadCloser, error)
}

func openReplaySource(from, undelivered string) (replaySource, error) {
	u, err := url.Parse(from)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch u.Scheme {
	case "s3":
		d, err := forwarders.ParseDestination("replay="+from, forwarders.Defaults{})
		if err != nil {
			return nil, err
		}
		client, err := forwarders.NewS3Client(d.Archive)
		if err != nil {
			return nil, err
		}
		prefix := d.Archive.Prefix
		if undelivered != "" {
			prefix = path.Join(prefix, "undelivered", undelivered)
		}
		return &s3Source{client: client, bucket: d.Archive.Bucket, prefix: prefix, skipUndelivered: undelivered == ""}, nil
	case "file":
		p := u.Path
		if undelivered != "" {
			p = filepath.Join(p, "undelivered", undelivered)
		}
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
		return fileSource(p), nil
	}
	return nil, fmt.Errorf("unsupported scheme %q (want s3 or file)", u.Scheme)
}

type s3Source struct {
	client          *minio.Client
	bucket, prefix  string
	skipUndelivered bool
}

// list lists the day partitions in range only: from the day of an hour
// before since, since an object is filed under its first event's hour and
// holds events received until its flush.
func (s *s3Source) list(ctx context.Context, since, until time.Time) ([]string, error) {
	base := s.prefix
	if base != "" {
		base += "/"
	}
	var prefixes []string
	if since.IsZero() {
		prefixes = []string{base + "dt="}
	} else {
		end := until
		if end.IsZero() {
			end = time.Now()
		}
		for day := since.Add(-time.Hour).UTC().Truncate(24 * time.Hour); day.Before(end); day = day.Add(24 * time.Hour) {
			prefixes = append(prefixes, base+"dt="+day.Format(time.DateOnly)+"/")
		}
	}
	var keys []string
	for _, p := range prefixes {
		for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: p, Recursive: true}) {
			if obj.Err != nil {
				return nil, fmt.Errorf("list s3://%s/%s: %w", s.bucket, p, obj.Err)
			}
			if strings.HasSuffix(obj.Key, ".ndjson.gz") && inWindow(obj.Key, since, until) {
				keys = append(keys, obj.Key)
			}
		}
	}
	slices.Sort(keys) // dt=, hour= and zero-padded ranges sort as written
	return keys, nil
}

// inWindow says whether an object filed under its first event's hour may
// hold events of [since, until): it was not filed after until, nor more
// than an hour before since.
func inWindow(key string, since, until time.Time) bool {
	m := partitionRE.FindStringSubmatch(key)
	if m == nil {
		return true
	}
	hour, err := time.Parse("2006-01-02 15", m[1]+" "+m[2])
	if err != nil {
		return true
	}
	return (since.IsZero() || !hour.Before(since.Add(-time.Hour).Truncate(time.Hour))) && (until.IsZero() || hour.Before(until))
}

var partitionRE = regexp.MustCompile(`dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/`)

func (s *s3Source) open(ctx context.Context, key string) (io.ReadCloser, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("get s3://%s/%s: %w", s.bucket, key, err)
	}
	return obj, nil
}

// fileSource is a file of NDJSON (a file destination's output) or a
// directory holding the archive's layout.
type fileSource string

func (f fileSource) list(context.Context, time.Time, time.Time) ([]string, error) {
	root := string(f)
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return []string{root}, err
	}
	var files []string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && e.Name() == "undelivered" && p != root {
			return filepath.SkipDir
		}
		if !e.IsDir() && (strings.HasSuffix(p, ".ndjson") || strings.HasSuffix(p, ".ndjson.gz")) {
			files = append(files, p)
		}
		return nil
	})
	slices.Sort(files)
	return files, err
}

func (fileSource) open(_ context.Context, name string) (io.ReadCloser, error) {
	return os.Open(name)
}

// replayer posts an archive's events in order, recording its progress.
type replayer struct {
	c      replayConfig
	src    replaySource
	stderr io.Writer
	client *http.Client

	progress              replayProgress
	objects, sent, passed int64
	start, lastReport     time.Time
}

// replayProgress is what --resume records: the objects done in full, and
// how far into the current one the sending went.
type replayProgress struct {
	Done   string `json:"done,omitempty"` // the last object sent in full
	Object string `json:"object,omitempty"`
	Lines  int    `json:"lines,omitempty"` // its lines sent, all write keys'
	// Upto and Keys: of the lines past Lines up to Upto, those of the
	// write keys in Keys are sent too (a batch per key, some sent when
	// the next failed).
	Upto int      `json:"upto,omitempty"`
	Keys []string `json:"keys,omitempty"`
}

func (r *replayer) run(ctx context.Context) error {
	if r.c.resume != "" {
		b, err := os.ReadFile(r.c.resume)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("read --resume file: %w", err)
		default:
			if err := json.Unmarshal(b, &r.progress); err != nil {
				return fmt.Errorf("read --resume file %s: %w", r.c.resume, err)
			}
		}
	}
	names, err := r.src.list(ctx, r.c.since, r.c.until)
	if err != nil {
		return err
	}
	for _, name := range names {
		if r.progress.Done != "" && name <= r.progress.Done {
			continue
		}
		var skip replayProgress
		if name == r.progress.Object {
			skip = r.progress
		}
		if err := r.object(ctx, name, skip); err != nil {
			return err
		}
		r.objects++
		r.progress = replayProgress{Done: name}
		if err := r.save(); err != nil {
			return err
		}
	}
	return nil
}

// object sends one object's events, past those skip says were sent.
func (r *replayer) object(ctx context.Context, name string, skip replayProgress) error {
	rc, err := r.src.open(ctx, name)
	if err != nil {
		return err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 64<<10)
	var in io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		in = zr
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	// One batch per write key, all sent together, so that the lines up to
	// the last one read are sent whenever progress is recorded.
	batches := map[string]*replayBatch{}
	var keys []string
	line, sentLines := 0, 0
	flush := func() error {
		var sentKeys []string
		for _, key := range keys {
			b := batches[key]
			if len(b.events) == 0 {
				continue
			}
			if err := r.post(ctx, key, b.events); err != nil {
				return err
			}
			r.sent += int64(len(b.events))
			b.events, b.size = b.events[:0], 0
			sentKeys = append(sentKeys, key)
			r.progress = replayProgress{Done: r.progress.Done, Object: name, Lines: sentLines, Upto: line, Keys: sentKeys}
			if err := r.save(); err != nil {
				return err
			}
		}
		sentLines = line
		r.progress = replayProgress{Done: r.progress.Done, Object: name, Lines: line}
		r.report(false)
		return r.save()
	}
	var p fastjson.Parser
	for sc.Scan() {
		line++
		if line <= skip.Lines || len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		v, err := p.ParseBytes(sc.Bytes())
		if err != nil {
			return fmt.Errorf("%s line %d: %w", name, line, err)
		}
		if !r.wants(v) {
			continue
		}
		key := string(v.GetStringBytes("writeKey"))
		v.Del("writeKey")
		if key == "" {
			key = r.c.writeKey
		}
		if line <= skip.Upto && slices.Contains(skip.Keys, key) {
			continue
		}
		r.passed++
		if r.c.destination != "" {
			routeOnly(v, r.c.destination)
		}
		if r.c.dryRun {
			continue
		}
		b := batches[key]
		if b == nil {
			b = &replayBatch{}
			batches[key] = b
			keys = append(keys, key)
		}
		ev := v.MarshalTo(nil)
		b.events = append(b.events, ev)
		b.size += len(ev) + 1
		if len(b.events) == replayBatchEvents || b.size >= replayBatchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return flush()
}

type replayBatch struct {
	events [][]byte
	size   int
}

// wants applies the window and the filters. The window is on receivedAt,
// the archive's partitioning time, else on timestamp.
func (r *replayer) wants(v *fastjson.Value) bool {
	if !r.c.since.IsZero() || !r.c.until.IsZero() {
		s := v.GetStringBytes("receivedAt")
		if s == nil {
			s = v.GetStringBytes("timestamp")
		}
		t, err := time.Parse(time.RFC3339Nano, string(s))
		if err != nil || t.Before(r.c.since) || (!r.c.until.IsZero() && !t.Before(r.c.until)) {
			return false
		}
	}
	if len(r.c.types) > 0 && !slices.Contains(r.c.types, string(v.GetStringBytes("type"))) {
		return false
	}
	if len(r.c.events) > 0 && !slices.Contains(r.c.events, string(v.GetStringBytes("event"))) {
		return false
	}
	return true
}

// routeOnly replaces the event's integrations object so that only the
// named destination takes it.
func routeOnly(v *fastjson.Value, dest string) {
	var a fastjson.Arena
	o := a.NewObject()
	o.Set("All", a.NewFalse())
	o.Set(dest, a.NewTrue())
	v.Set("integrations", o)
}

// post sends one batch to /v1/import, retrying what a server busy or
// shutting down answers (503, 429, 5xx, network errors) with backoff.
func (r *replayer) post(ctx context.Context, key string, batch [][]byte) error {
	var body bytes.Buffer
	body.WriteString(`{"batch":[`)
	for i, ev := range batch {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(ev)
	}
	body.WriteString(`]}`)
	wait := 200 * time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("interrupted (run it again with the same --resume to go on): %w", err)
		}
		// A request under way is not cut short by an interrupt: cut, the
		// server may have taken the events without the progress saying
		// so, and a resumed replay would send them twice.
		req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodPost, strings.TrimSuffix(r.c.to, "/")+"/v1/import", bytes.NewReader(body.Bytes()))
		if err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "spillway-replay")
		if key != "" {
			req.SetBasicAuth(key, "")
		}
		resp, err := r.client.Do(req)
		status := 0
		var msg []byte
		if err == nil {
			status = resp.StatusCode
			msg, _ = io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if status/100 == 2 {
				return nil
			}
			if status != http.StatusTooManyRequests && status < 500 {
				return fmt.Errorf("post %d events: %s: %s", len(batch), resp.Status, msg)
			}
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// save writes the progress file whole: a temporary file renamed over it,
// so that a replay killed while saving resumes from the last save.
func (r *replayer) save() error {
	if r.c.resume == "" || r.c.dryRun {
		return nil
	}
	b, _ := json.Marshal(r.progress)
	tmp := r.c.resume + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write --resume file: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.c.resume)
	}
	if err != nil {
		return fmt.Errorf("write --resume file: %w", err)
	}
	return nil
}

// report prints progress to stderr at most once a second, and at the end.
func (r *replayer) report(final bool) {
	now := time.Now()
	if !final && now.Sub(r.lastReport) < time.Second {
		return
	}
	r.lastReport = now
	secs := now.Sub(r.start).Seconds()
	verb := "sent"
	n := r.sent
	if r.c.dryRun {
		verb, n = "would send", r.passed
	}
	word := "replay:"
	if final {
		word = "replay done:"
	}
	fmt.Fprintf(r.stderr, "%s %d objects, %d events %s, %.0f events/s\n", word, r.objects, n, verb, float64(n)/max(secs, 1e-3))
}
