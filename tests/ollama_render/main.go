// Command ollamarender executes an Ollama chat TEMPLATE the way Ollama's server does, for
// llmos's tests (the ollama binary is not installable where they run).
//
//	ollamarender CASES.json  ->  JSON on stdout: {"tag": ..., "vars": [...], "outputs": [...]}
//
// CASES.json: {"template": "...", "cases": [{"messages": [...], "tools": [...]}]}, messages and
// tools in Ollama's /api/chat JSON. What is modelled, from Ollama's template/template.go and
// tools/template.go:
//   - parsing: text/template with Option("missingkey=zero") and one helper, "json", which is
//     json.Marshal of its argument (errors dropped);
//   - the data: messages collated (consecutive messages of one role other than "tool" merged,
//     contents joined by "\n\n"; every system message also joined into .System), executed once
//     over the whole list with System, Messages, Tools, Response "", Think, IsThinkSet, as Ollama
//     does for a template that names .Messages (we refuse one that does not);
//   - "vars": the lower-cased identifiers the template names (Ollama reports the tools
//     capability when "tools" is among them);
//   - "tag": the tool-call tag Ollama's tool parser reads off the template: the first text inside
//     the first {{ if }} whose condition names the field .ToolCalls, trimmed, cut at "{".
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"

	"llmos/ollamarender/api"
)

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

type chatCase struct {
	Messages []api.Message `json:"messages"`
	Tools    api.Tools     `json:"tools"`
}

func collate(msgs []api.Message) (string, []*api.Message) {
	var system []string
	var out []*api.Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		n := len(out)
		if n > 0 && out[n-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			out[n-1].Content += "\n\n" + msgs[i].Content
		} else {
			out = append(out, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), out
}

// names collects the identifiers of fields and variables, as Ollama's Vars does.
func names(n parse.Node, into map[string]bool) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				names(c, into)
			}
		}
	case *parse.ActionNode:
		names(n.Pipe, into)
	case *parse.TemplateNode:
		if n.Pipe != nil {
			names(n.Pipe, into)
		}
	case *parse.IfNode:
		names(&n.BranchNode, into)
	case *parse.RangeNode:
		names(&n.BranchNode, into)
	case *parse.WithNode:
		names(&n.BranchNode, into)
	case *parse.BranchNode:
		names(n.Pipe, into)
		names(n.List, into)
		if n.ElseList != nil {
			names(n.ElseList, into)
		}
	case *parse.PipeNode:
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names(a, into)
			}
		}
	case *parse.FieldNode:
		for _, s := range n.Ident {
			into[strings.ToLower(s)] = true
		}
	case *parse.VariableNode:
		for _, s := range n.Ident {
			into[strings.ToLower(s)] = true
		}
	}
}

func namesToolCalls(n *parse.IfNode) bool {
	for _, c := range n.Pipe.Cmds {
		for _, a := range c.Args {
			if f, ok := a.(*parse.FieldNode); ok {
				for _, s := range f.Ident {
					if s == "ToolCalls" {
						return true
					}
				}
			}
		}
	}
	return false
}

func branches(b *parse.BranchNode) []*parse.ListNode {
	if b.ElseList != nil {
		return []*parse.ListNode{b.List, b.ElseList}
	}
	return []*parse.ListNode{b.List}
}

func findToolCallsIf(nodes []parse.Node) *parse.IfNode {
	for _, node := range nodes {
		var lists []*parse.ListNode
		switch n := node.(type) {
		case *parse.IfNode:
			if namesToolCalls(n) {
				return n
			}
			lists = branches(&n.BranchNode)
		case *parse.RangeNode:
			lists = branches(&n.BranchNode)
		case *parse.WithNode:
			lists = branches(&n.BranchNode)
		case *parse.ListNode:
			lists = []*parse.ListNode{n}
		}
		for _, l := range lists {
			if found := findToolCallsIf(l.Nodes); found != nil {
				return found
			}
		}
	}
	return nil
}

// firstText stops at the first action: text after one is not the tag.
func firstText(nodes []parse.Node) *parse.TextNode {
	for _, node := range nodes {
		var lists []*parse.ListNode
		switch n := node.(type) {
		case *parse.TextNode:
			return n
		case *parse.ActionNode:
			return nil
		case *parse.IfNode:
			lists = branches(&n.BranchNode)
		case *parse.RangeNode:
			lists = branches(&n.BranchNode)
		case *parse.WithNode:
			lists = branches(&n.BranchNode)
		case *parse.ListNode:
			if t := firstText(n.Nodes); t != nil {
				return t
			}
			continue
		}
		for _, l := range lists {
			if t := firstText(l.Nodes); t != nil {
				return t
			}
		}
		return nil
	}
	return nil
}

func toolTag(t *template.Template) string {
	n := findToolCallsIf(t.Tree.Root.Nodes)
	if n == nil {
		return ""
	}
	text := firstText(n.List.Nodes)
	if text == nil {
		return ""
	}
	return strings.Split(strings.TrimSpace(string(text.Text)), "{")[0]
}

func run(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var in struct {
		Template string     `json:"template"`
		Cases    []chatCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return err
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		return err
	}
	vars := map[string]bool{}
	for _, t := range tmpl.Templates() {
		if t.Tree != nil {
			names(t.Tree.Root, vars)
		}
	}
	if !vars["messages"] {
		return fmt.Errorf("the template does not name .Messages: Ollama's per-turn path is not modelled")
	}
	outputs := []string{}
	for _, c := range in.Cases {
		system, messages := collate(c.Messages)
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{
			"System": system, "Messages": messages, "Tools": c.Tools, "Response": "",
			"Think": false, "IsThinkSet": false,
		})
		if err != nil {
			return err
		}
		outputs = append(outputs, b.String())
	}
	sorted := []string{}
	for v := range vars {
		sorted = append(sorted, v)
	}
	sort.Strings(sorted)
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"tag": toolTag(tmpl), "vars": sorted, "outputs": outputs,
	})
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ollamarender CASES.json")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "ollamarender:", err)
		os.Exit(1)
	}
}
