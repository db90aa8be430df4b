package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spillwayhq/spillway/forwarders"
	"github.com/spillwayhq/spillway/proxy"
	"github.com/spillwayhq/spillway/spool"
)

const defaultAdminAddr = "127.0.0.1:8080"

// adminClient talks to a running server's admin API.
type adminClient struct {
	base string
	http *http.Client
}

func newAdminClient(addr string) *adminClient {
	base := addr
	if u, err := url.Parse(addr); err != nil || u.Scheme == "" || u.Host == "" {
		base = "http://" + addr
	}
	// No timeout on the whole request: a replay of a large store answers
	// once it is done, and a client that gave up after 10 s reported a
	// replay that went on as failed, so that running it again sent every
	// event twice. Reaching the server is bounded; quick reads set their
	// own limit (quickTimeout).
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.DialContext = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	return &adminClient{base: base, http: &http.Client{Transport: transport}}
}

// quickTimeout bounds the admin requests that answer at once (status,
// a page of tail), so that a hung server does not hang the command.
const quickTimeout = 10 * time.Second

func (a *adminClient) do(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	u := a.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if token := os.Getenv(envName("admin-token")); token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach spillway at %s: %w", a.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, body)
	}
	return resp, nil
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("spillway status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultAdminAddr, "admin address of the running spillway")
	asJSON := fs.Bool("json", false, "print the admin API's JSON")
	watch := fs.Bool("watch", false, "refresh every second")
	if err := parseClientFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "spillway status: %v\n", err)
		return 2
	}
	client := newAdminClient(*addr)
	for {
		if err := printStatus(ctx, client, *asJSON, stdout); err != nil {
			if ctx.Err() != nil {
				// Interrupted, --watch mid-refresh most likely: as when
				// waiting for the next one.
				return 0
			}
			fmt.Fprintf(stderr, "spillway status: %v\n", err)
			return 1
		}
		if !*watch {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(time.Second):
		}
		if !*asJSON {
			fmt.Fprint(stdout, "\033[H\033[2J")
		}
	}
}

func printStatus(ctx context.Context, client *adminClient, asJSON bool, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, quickTimeout)
	defer cancel()
	resp, err := client.do(ctx, http.MethodGet, "/admin/status", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if asJSON {
		_, err := fmt.Fprintf(w, "%s\n", body)
		return err
	}
	var rows []forwarders.DestinationStatus
	if err := json.Unmarshal(body, &rows); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tKIND\tSTATE\tBACKLOG\tLAG\tDELIVERED\tRETRIED\tDEAD-LETTERED\tLAST ERROR")
	for _, r := range rows {
		lag := time.Duration(r.LagSeconds * float64(time.Second)).Round(time.Millisecond)
		lastErr := r.LastError
		if lastErr != "" && !r.LastErrorAt.IsZero() {
			// A destination that has recovered still shows its last error:
			// its age tells the two apart.
			lastErr = fmt.Sprintf("%v ago: %s", time.Since(r.LastErrorAt).Round(time.Second), lastErr)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%s\n", r.Name, r.Kind, r.State, r.BacklogEvents, lag,
			r.Delivered, r.Retried, r.DeadLettered, lastErr)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := printLanes(rows, w); err != nil {
		return err
	}
	return printViolations(ctx, client, w)
}

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "spillway dlq: want list, replay or purge")
		return 2
	}
	action, args := args[0], args[1:]
	if action != "list" && action != "replay" && action != "purge" {
		fmt.Fprintf(stderr, "spillway dlq: unknown action %q (want list, replay or purge)\n", action)
		return 2
	}
	fs := flag.NewFlagSet("spillway dlq "+action, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultAdminAddr, "admin address of the running spillway")
	dir := fs.String("spool-dir", "", "work on this stopped spool directory instead of a running server")
	var f spool.Filter
	fs.StringVar(&f.Destination, "destination", "", "only this destination's dead letters")
	fs.StringVar(&f.Reason, "reason", "", "only dead letters with this reason (invalid, too_large, violation, rejected, expired, corrupt)")
	fs.IntVar(&f.Limit, "limit", 0, "at most this many (0: all)")
	if err := parseClientFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "spillway dlq: %v\n", err)
		return 2
	}
	if f.Limit < 0 {
		fmt.Fprintln(stderr, "spillway dlq: --limit must be >= 0")
		return 2
	}
	var err error
	if *dir != "" {
		err = dlqOnDir(ctx, action, *dir, f, stdout)
	} else {
		err = dlqOnServer(ctx, action, newAdminClient(*addr), f, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "spillway dlq %s: %v\n", action, err)
		return 1
	}
	return 0
}

func filterQuery(f spool.Filter) url.Values {
	q := url.Values{}
	if f.Destination != "" {
		q.Set("destination", f.Destination)
	}
	if f.Reason != "" {
		q.Set("reason", f.Reason)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

func dlqOnServer(ctx context.Context, action string, client *adminClient, f spool.Filter, w io.Writer) error {
	if action == "list" {
		resp, err := client.do(ctx, http.MethodGet, "/admin/dlq", filterQuery(f))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(w, resp.Body)
		return err
	}
	resp, err := client.do(ctx, http.MethodPost, "/admin/dlq/"+action, filterQuery(f))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out proxy.DLQCount
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s: %d\n", pastTense(action), out.Count)
	return err
}

func pastTense(action string) string {
	if action == "replay" {
		return "replayed"
	}
	return "purged"
}

// dlqOnDir works on a stopped spool. Badger's directory lock refuses a
// spool that a running server holds, so the two never race.
func dlqOnDir(ctx context.Context, action, dir string, f spool.Filter, w io.Writer) error {
	if err := checkSpoolDir(dir); err != nil {
		return err
	}
	// Opening the spool writes to it (a new generation, meta's log), and a
	// replay writes events: private, as the server's files are.
	syscall.Umask(0o077)
	sp, err := spool.Open(spool.Config{Dir: dir}, nil, nil)
	if err != nil {
		return err
	}
	defer sp.Close(context.WithoutCancel(ctx))
	switch action {
	case "list":
		bw := bufio.NewWriter(w)
		err := sp.DeadLetters(f, func(d spool.DeadLetter) error {
			d.WriteKey = spool.MaskWriteKey(d.WriteKey)
			line, err := json.Marshal(d)
			if err != nil {
				return err
			}
			bw.Write(line)
			return bw.WriteByte('\n')
		})
		if err != nil {
			return err
		}
		return bw.Flush()
	case "replay":
		n, err := sp.Replay(ctx, f)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "replayed: %d\n", n)
		return err
	default:
		n, err := sp.Purge(f)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "purged: %d\n", n)
		return err
	}
}

// checkSpoolDir refuses a directory that holds no spool before spool.Open
// would make one there: a mistyped --spool-dir would otherwise list no dead
// letters, or purge none, as if all were well, and leave an empty spool
// behind.
func checkSpoolDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--spool-dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("--spool-dir %s is not a directory", dir)
	}
	if !spool.Exists(dir) {
		return fmt.Errorf("--spool-dir %s holds no spool (no meta/ database): give the directory spillway run used", dir)
	}
	return nil
}

// printLanes lists, per destination, the write keys with a lane of their
// own: masked, with their state, backlog, lag and last error.
func printLanes(rows []forwarders.DestinationStatus, w io.Writer) error {
	for _, r := range rows {
		if len(r.Lanes) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s: %d write key(s) not up\n", r.Name, r.LanesNotUp)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WRITE KEY\tSTATE\tBACKLOG\tLAG\tLAST ERROR")
		for _, l := range r.Lanes {
			lag := time.Duration(l.LagSeconds * float64(time.Second)).Round(time.Millisecond)
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", l.WriteKey, l.State, l.BacklogEvents, lag, l.LastError)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}
