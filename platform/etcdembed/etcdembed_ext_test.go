package etcdembed_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fluxkv/fluxkv/platform/etcdembed"
)

func TestStartServesAndKeepsData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := etcdembed.Start(dir, "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	put := func(url string) {
		client, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := client.Put(ctx, "/k", "v"); err != nil {
			t.Fatal(err)
		}
	}
	put(srv.ClientURL())
	srv.Close()

	srv, err = etcdembed.Start(dir, "http://127.0.0.1:0")
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer srv.Close()
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.ClientURL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	resp, err := client.Get(context.Background(), "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v, %v", resp, err)
	}
}
