// Command spillway is the event-forwarding sidecar: see README.md.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  spillway [run] [flags]             run the server (flags also from SPILLWAY_<FLAG>)
  spillway status [--addr A] [--json] [--watch]
  spillway tail [--addr A] [--destination N] [--type T]   print received events live, one JSON per line
  spillway dlq list|replay|purge [--destination N] [--reason R] [--limit N] [--addr A | --spool-dir D]
  spillway plan check [--unplanned allow|flag|block] FILE [EVENTS.ndjson]   check a tracking plan, and events against it
  spillway replay --from s3://BUCKET/PREFIX|file:///PATH [--since T] [--until T] [--type T] [--event E]
                 [--destination N] [--undelivered N] [--to URL] [--resume FILE] [--dry-run]   re-send archived events
  spillway version
run 'spillway run -h' for the server's flags`

// run is main without the process: it returns the exit status, 2 for a
// usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runServer(ctx, args, stdout, stderr)
	case "status":
		return runStatus(ctx, args, stdout, stderr)
	case "dlq":
		return runDLQ(ctx, args, stdout, stderr)
	case "tail":
		return runTail(ctx, args, stdout, stderr)
	case "plan":
		return runPlan(ctx, args, stdout, stderr)
	case "replay":
		return runReplay(ctx, args, stdout, stderr)
	case "version":
		if len(args) > 0 {
			fmt.Fprintf(stderr, "spillway version takes no arguments, got %q\n", args)
			return 2
		}
		fmt.Fprintln(stdout, "spillway", version)
		return 0
	case "help":
		fmt.Fprintln(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "spillway: unknown command %q\n%s\n", cmd, usage)
	return 2
}
