// recgen from Go: Recommend with text, SendFeedback, StreamRecommend.
//
//	make stubs-go && clients/go/gen/bin/example [--target 127.0.0.1:50051] [--user alice]
//
// Built in GOPATH mode against Debian's Go packages (see clients/go/README.md);
// the stubs are generated into clients/go/gen/src (never edited).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	recgenv1 "github.com/recgen/recgen/clients/go/recgenv1"
	"google.golang.org/grpc"
)

func newEventID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func run(target, user string) error {
	conn, err := grpc.Dial(target, grpc.WithInsecure()) // plaintext, loopback (grpc-go 1.33: no credentials/insecure)
	if err != nil {
		return err
	}
	defer conn.Close()
	stub := recgenv1.NewRecommenderClient(conn)

	// 1. Ranked items plus a short text presenting them.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := stub.Recommend(ctx, &recgenv1.RecommendRequest{
		UserId: user, K: 5, Explain: true,
		Context: &recgenv1.Context{Device: "mobile", LocalTime: "2026-11-27T20:15:00+01:00"},
	})
	if err != nil {
		return fmt.Errorf("Recommend: %w", err)
	}
	fmt.Printf("model %s, request %s\n", resp.ModelVersion, resp.RequestId)
	for i, item := range resp.Items {
		fmt.Printf("  %d. %s [%s] score=%.3f\n", i+1, item.Title, item.ItemId, item.Score)
	}
	fmt.Printf("text (%s): %s\n", resp.TextStatus, resp.Text)
	if len(resp.Items) == 0 {
		return fmt.Errorf("Recommend returned no items")
	}

	// 2. The user clicks the first item: the very next answer reflects it.
	first := resp.Items[0]
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	ack, err := stub.SendFeedback(ctx2, &recgenv1.SendFeedbackRequest{
		EventId: newEventID(), UserId: user, ItemId: first.ItemId,
		Type: recgenv1.FeedbackType_FEEDBACK_TYPE_CLICK, RequestId: resp.RequestId,
	})
	if err != nil {
		return fmt.Errorf("SendFeedback: %w", err)
	}
	fmt.Printf("feedback CLICK %s: stored=%t\n", first.Title, ack.Stored)

	// 3. Streamed: items first, then the text piece by piece as it is generated.
	ctx3, cancel3 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel3()
	stream, err := stub.StreamRecommend(ctx3, &recgenv1.StreamRecommendRequest{
		Request: &recgenv1.RecommendRequest{UserId: user, K: 3},
	})
	if err != nil {
		return fmt.Errorf("StreamRecommend: %w", err)
	}
	fmt.Print("stream: ")
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("StreamRecommend: %w", err)
		}
		switch e := ev.Event.(type) {
		case *recgenv1.StreamRecommendResponse_Items:
			titles := make([]string, 0, len(e.Items.Items))
			for _, it := range e.Items.Items {
				titles = append(titles, it.Title)
			}
			fmt.Println(strings.Join(titles, " | "))
		case *recgenv1.StreamRecommendResponse_TextPiece:
			fmt.Print(e.TextPiece)
		case *recgenv1.StreamRecommendResponse_Final:
			fmt.Printf("\n[final: %s]\n", e.Final.TextStatus)
		}
	}
	return nil
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "host:port of the recgen server")
	user := flag.String("user", "alice", "user id")
	flag.Parse()
	if err := run(*target, *user); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
