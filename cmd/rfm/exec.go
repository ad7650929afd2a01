package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"rainforest/internal/agentproto"
	"rainforest/internal/untrusted"
	"rainforest/rfm/api"
	"rainforest/rfm/supervisor"
)

// Exit statuses of rfm exec beside the command's own (as docker exec's).
const (
	exitCannotRun = 127 // the agent could not start the command
	exitSignal    = 128 // + the signal that killed the command
)

func execCommand(g *globalFlags) *cobra.Command {
	var interactive, tty bool
	var env []string
	var dir string
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] NAME -- COMMAND [ARG...]",
		Short: "Run a command in a subOS through its agent and exit with its status",
		Long: `Run a command in a subOS through its agent (rf-agent, reached over
virtio-vsock), print its output and exit with its status, as docker exec
does: the command's exit code, 128+N when signal N killed it, 127 when it
could not be started.

-i forwards standard input to the command (its end closes the command's
stdin); without -i the command reads /dev/null. -t runs the command on a
pseudo-terminal in the guest, puts this terminal in raw mode and follows
its size; its output all comes on standard output. Closing rfm (Ctrl-C
without -t) kills the command.

The subOS needs an agent: rfm inspect NAME shows agent.state healthy.`,
		Example: `  rfm exec web -- uname -a
  rfm exec web -- sh -c 'echo hi; exit 3'; echo $?     # prints hi, then 3
  echo data | rfm exec -i web -- cat
  rfm exec -it web -- sh                               # an interactive shell`,
		Args: func(cmd *cobra.Command, args []string) error {
			at := cmd.ArgsLenAtDash()
			switch {
			case len(args) == 0:
				return usageErrorf("exec needs a subOS name and a command: rfm exec NAME -- COMMAND")
			case at == -1 && len(args) == 1 || at == len(args):
				return usageErrorf("exec %s: no command; give it after --: rfm exec %s -- COMMAND", args[0], args[0])
			case at > 1:
				return usageErrorf("exec takes one subOS name before --, got %q", args[:at])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, argv := args[0], args[1:]
			req := agentproto.Exec{Argv: argv, Env: env, Dir: dir, Stdin: interactive, TTY: tty}
			for _, e := range env {
				if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
					return usageErrorf("--env %q: give NAME=VALUE", e)
				}
			}
			var restore func()
			inFd := int(os.Stdin.Fd())
			if tty {
				if t := os.Getenv("TERM"); t != "" {
					req.Env = append(req.Env, "TERM="+t)
				}
				if cols, rows, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
					req.Rows, req.Cols = uint16(rows), uint16(cols)
				}
			}
			ctx := cmd.Context()
			ex, err := g.client().Exec(ctx, name, req)
			if err != nil {
				return err
			}
			defer ex.Close()
			// Ctrl-C (without a raw terminal) ends the stream, which kills
			// the command in the guest.
			stop := context.AfterFunc(ctx, func() { ex.Close() })
			defer stop()
			if tty && interactive && term.IsTerminal(inFd) {
				st, err := term.MakeRaw(inFd)
				if err == nil {
					restore = func() { _ = term.Restore(inFd, st) }
					defer restore()
				}
				stopResize := followSize(ex)
				defer stopResize()
			}
			if interactive {
				go sendStdin(cmd.InOrStdin(), ex)
			}
			err = receive(ex, name, argv[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
			if ctx.Err() != nil {
				return exitError{code: exitSignal + int(syscall.SIGINT)}
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "forward standard input to the command")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "run the command on a pseudo-terminal (raw mode here with -i on a terminal)")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "set NAME=VALUE in the command's environment (repeatable)")
	cmd.Flags().StringVarP(&dir, "workdir", "w", "", "the command's working directory in the guest")
	return cmd
}

// sendStdin forwards r to the command, then closes its stdin.
func sendStdin(r io.Reader, ex *api.ExecConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if ex.Send(&agentproto.Data{Stream: agentproto.TypeStdin, Bytes: append([]byte(nil), buf[:n]...)}) != nil {
				return
			}
		}
		if err != nil {
			_ = ex.Send(&agentproto.StdinClose{})
			return
		}
	}
}

// followSize sends the terminal's size to the command on every SIGWINCH
// until the returned function is called.
func followSize(ex *api.ExecConn) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ch:
				if cols, rows, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
					_ = ex.Send(&agentproto.Resize{Rows: uint16(rows), Cols: uint16(cols)})
				}
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

// receive writes the command's output until its exit, and returns the
// exit status as an exitError (nil for 0).
func receive(ex *api.ExecConn, name, prog string, stdout, stderr io.Writer) error {
	for {
		m, err := ex.Recv()
		if errors.Is(err, agentproto.ErrUnknownType) {
			continue
		}
		if err != nil {
			return fmt.Errorf("subOS %s: the command's stream ended before its exit status (%v); the agent or the supervisor went away", name, err)
		}
		switch m := m.(type) {
		case *agentproto.Data:
			w := stdout
			if m.Stream == agentproto.TypeStderr {
				w = stderr
			}
			if _, err := w.Write(m.Bytes); err != nil {
				return fmt.Errorf("writing the command's output: %w", err)
			}
		case *agentproto.Exit:
			switch {
			case m.Code == -1:
				return exitError{code: exitCannotRun, err: fmt.Errorf("subOS %s: cannot run %s: %s", name, strconv.Quote(prog), strconv.Quote(m.Error))}
			case m.Signal != 0:
				return exitError{code: exitSignal + int(m.Signal)}
			case m.Code != 0:
				return exitError{code: int(m.Code)}
			}
			return nil
		case *agentproto.Error:
			return fmt.Errorf("subOS %s: the agent refused the command: %s: %s", name, strconv.Quote(m.Code), strconv.Quote(m.Message))
		}
	}
}

func statsCommand(g *globalFlags) *cobra.Command {
	var watch bool
	cmd := &cobra.Command{
		Use:   "stats NAME",
		Short: "Show a subOS's latest report from its agent: CPU use, memory, load, pressure, processes",
		Long: `Show a subOS's latest report from its agent (from the guest's /proc): the
use of each CPU and of all of them in percent over the report's interval,
memory used and total, the load averages, pressure stall information
(PSI, where the guest kernel has it), the number of processes and the
virtio-fs shares mounted; then what the host spends on the subOS: its
cgroup's CPU time (its VMM and its shares' virtiofsd) and each
virtiofsd's.

--watch prints a new report every ` + supervisor.AgentStatsInterval.String() + ` until interrupted (with -o json, one
JSON object a line).`,
		Example: `  rfm stats web
  rfm stats web --watch
  rfm stats web -o json | jq .memory.total_bytes`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c := g.client()
			var last uint64
			for {
				st, err := c.Stats(ctx, args[0])
				if err != nil {
					if watch && ctx.Err() != nil {
						return nil
					}
					return err
				}
				if !watch || st.Seq != last {
					if err := printStats(g, cmd.OutOrStdout(), st, watch); err != nil {
						return err
					}
				}
				last = st.Seq
				if !watch {
					return nil
				}
				if !sleepCtx(ctx, supervisor.AgentStatsInterval) {
					return nil
				}
			}
		},
	}
	g.addOutputFlag(cmd, "")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print every new report until interrupted")
	return cmd
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func printStats(g *globalFlags, w io.Writer, st supervisor.AgentStats, watch bool) error {
	if g.output == outputJSON && watch {
		st.CPUs = nonNil(st.CPUs)
		return jsonLine(w, st)
	}
	st.CPUs = nonNil(st.CPUs)
	return g.print(w, st, func(w io.Writer) { statsTable(w, st, watch) })
}

func statsTable(w io.Writer, st supervisor.AgentStats, watch bool) {
	if watch {
		fmt.Fprintf(w, "%s\t%s\n", st.Name, st.Time.Local().Format(time.DateTime))
	}
	fmt.Fprintln(w, "CPU\tUSER%\tSYSTEM%\tIOWAIT%\tSTEAL%\tIDLE%")
	row := func(label string, c agentproto.CPUUse) {
		fmt.Fprintf(w, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\n", label, c.User, c.System, c.IOWait, c.Steal, c.Idle)
	}
	row("all", st.All)
	for _, c := range st.CPUs {
		row(strconv.Itoa(int(c.CPU)), c)
	}
	m := st.Memory
	used := m.Total - min(m.Total, m.Available)
	fmt.Fprintf(w, "\nMEMORY\t%dM used of %dM (%dM available)\n", used>>20, m.Total>>20, m.Available>>20)
	l := st.Load
	fmt.Fprintf(w, "LOAD\t%.2f %.2f %.2f (%d runnable of %d)\n", l.Load1, l.Load5, l.Load15, l.Runnable, l.Tasks)
	if p := st.PSI; p != nil {
		for _, r := range []struct {
			name string
			p    *agentproto.Pressure
		}{{"cpu", p.CPU}, {"memory", p.Memory}, {"io", p.IO}} {
			if r.p == nil {
				continue
			}
			line := fmt.Sprintf("some %.2f %.2f %.2f", r.p.Some.Avg10, r.p.Some.Avg60, r.p.Some.Avg300)
			if f := r.p.Full; f != nil {
				line += fmt.Sprintf(", full %.2f %.2f %.2f", f.Avg10, f.Avg60, f.Avg300)
			}
			fmt.Fprintf(w, "PSI %s\t%s (avg10 avg60 avg300)\n", r.name, line)
		}
	}
	fmt.Fprintf(w, "PROCESSES\t%d\n", st.Processes)
	if h := st.Host; h != nil {
		// What the host charges the subOS: its cgroup's CPU time.
		vhost := ""
		if h.VhostSeconds > 0 {
			vhost = fmt.Sprintf(" (vhost %.2fs)", h.VhostSeconds)
		}
		fmt.Fprintf(w, "HOST CPU\tvCPUs %.2fs, VMM back ends %.2fs%s, other back ends %.2fs\n", h.VCPUSeconds, h.BackendSeconds, vhost, h.OtherSeconds)
		for _, p := range h.Processes {
			fmt.Fprintf(w, "  %d\t%s %.2fs\n", p.PID, untrusted.EscapeTerminal([]byte(p.Comm)), p.CPUSeconds)
		}
		for _, n := range h.NICs {
			fmt.Fprintf(w, "NIC %s\t%s\n", n.ID, counterLine(n.Counters))
		}
	}
	shareLines(w, st)
	if watch {
		fmt.Fprintln(w)
	}
}

// jsonLine writes v as one line of JSON.
func jsonLine(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// counterLine lists counters as name=value, sorted by name ("none" for
// none).
func counterLine(c map[string]uint64) string {
	if len(c) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c)) {
		parts = append(parts, k+"="+strconv.FormatUint(c[k], 10))
	}
	return strings.Join(parts, " ")
}
