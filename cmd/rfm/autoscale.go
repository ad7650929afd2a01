package main

import (
	"io"
	"time"

	"github.com/spf13/cobra"

	"rainforest/rfm/supervisor"
)

// autoscaleCommand sets or clears a running subOS's autoscaling policy.
func autoscaleCommand(g *globalFlags) *cobra.Command {
	var lower, upper, window, cooldown time.Duration
	var minCPUs, maxCPUs int
	var off bool
	cmd := &cobra.Command{
		Use:   "autoscale NAME (--lower DURATION --upper DURATION [--window DURATION] [--cooldown DURATION] [--min-cpus N] [--max-cpus N] | --off)",
		Short: "Move cores to a latency-critical subOS by its p99 latency",
		Long: `Turn on (or change) the latency-driven autoscaling of a running
latency-critical subOS (rfm create --class latency-critical, or class: in
the layout). Its p99 latency comes from the guest (an application runs
"rf-agent latency 12.5ms", or writes "p99 12.5ms" to the datagram socket
/run/rf-agent/latency.sock) or from the host (POST /v1/subos/NAME/latency).
While it stays above --upper in most of a --window's samples, one core at a
time is preempted from a batch subOS; while it stays below --lower, one
borrowed core goes back; after each move the autoscaler waits --cooldown.
Every move is an audit event "autoscale" (rfm events) naming the latency.
The policy is kept with the subOS across supervisor restarts. --off turns
it off; the cores it holds stay.`,
		Example: `  rfm autoscale api --lower 5ms --upper 20ms
  rfm autoscale api --lower 5ms --upper 20ms --window 10s --max-cpus 6
  rfm autoscale api --off`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			var a *supervisor.AutoscaleSpec
			switch {
			case off:
				for _, f := range []string{"lower", "upper", "window", "cooldown", "min-cpus", "max-cpus"} {
					if fl.Changed(f) {
						return usageErrorf("--off takes no --%s", f)
					}
				}
			case !fl.Changed("lower") || !fl.Changed("upper"):
				return usageErrorf("--lower and --upper are required (or --off)")
			case lower >= upper:
				return usageErrorf("--lower %v must be below --upper %v", lower, upper)
			case lower < 0 || window < 0 || cooldown < 0 || minCPUs < 0 || maxCPUs < 0:
				return usageErrorf("durations and cpu counts must not be negative")
			default:
				a = &supervisor.AutoscaleSpec{Lower: supervisor.Duration(lower), Upper: supervisor.Duration(upper),
					Window: supervisor.Duration(window), Cooldown: supervisor.Duration(cooldown), MinCPUs: minCPUs, MaxCPUs: maxCPUs}
			}
			info, err := g.client().SetAutoscale(cmd.Context(), args[0], a)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), infoJSON(info), func(w io.Writer) { psTable(w, []supervisor.Info{info}) })
		},
	}
	fl := cmd.Flags()
	fl.DurationVar(&lower, "lower", 0, "lt: below this p99, a borrowed core goes back")
	fl.DurationVar(&upper, "upper", 0, "ut: above this p99, a core comes from a batch subOS")
	fl.DurationVar(&window, "window", 0, "how far back samples count (default 10s)")
	fl.DurationVar(&cooldown, "cooldown", 0, "wait after a move (default: the window)")
	fl.IntVar(&minCPUs, "min-cpus", 0, "fewest cores it is left (default 1)")
	fl.IntVar(&maxCPUs, "max-cpus", 0, "most cores it is given (default: its max_cpus)")
	fl.BoolVar(&off, "off", false, "turn autoscaling off")
	fixedValues(cmd, "lower", "5ms", "1ms", "500us")
	fixedValues(cmd, "upper", "20ms", "10ms", "2ms")
	fixedValues(cmd, "window", "10s", "30s")
	fixedValues(cmd, "cooldown", "10s", "30s")
	g.addOutputFlag(cmd, "")
	return cmd
}
