package main

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func healthCommand() *command {
	fs := newFlagSet("health")
	var (
		cf      clientFlags
		service string
	)
	cf.register(fs)
	fs.StringVar(&service, "service", "", "`name` of the service to check; empty checks the server as a whole")
	c := &command{
		name:    "health",
		summary: "Ask the endpoint's gRPC health service whether it is serving. Exits 1 if it is not.",
		flags:   fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) > 0 {
			return usageError(env, c.name, "unexpected arguments %q", args)
		}
		base, err := cf.baseURL()
		if err != nil {
			return fail(env, c.name, err)
		}
		opts, err := cf.clientOptions()
		if err != nil {
			return fail(env, c.name, err)
		}
		httpc, err := cf.tls.httpClient()
		if err != nil {
			return fail(env, c.name, err)
		}
		client := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](
			httpc, base+"/grpc.health.v1.Health/Check", opts...)
		ctx, cancel := context.WithTimeout(env.ctx, cf.timeout)
		defer cancel()
		resp, err := client.CallUnary(ctx, connect.NewRequest(&healthpb.HealthCheckRequest{Service: service}))
		if err != nil {
			return fail(env, c.name, err)
		}
		status := resp.Msg.GetStatus()
		if cf.json {
			printJSON(env, struct {
				Status string `json:"status"`
			}{status.String()})
		} else {
			fmt.Fprintln(env.stdout, status.String())
		}
		if status != healthpb.HealthCheckResponse_SERVING {
			return exitNotFound
		}
		return exitOK
	}
	return c
}
