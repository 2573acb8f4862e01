"""The tether agent: runs in a pod next to the target container and acts in its context.

Its building blocks find the target process (`target`), make connections from inside the
target's network namespace (`netns`), resolve names the way the pod does (`resolver`), read
its environment (`environ`) and give confined access to its files (`files`).
"""
