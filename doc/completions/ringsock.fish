# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ringsock_global_optspecs
    string join \n h/help V/version
end

function __fish_ringsock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ringsock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ringsock_using_subcommand
    set -l cmd (__fish_ringsock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ringsock -n "__fish_ringsock_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ringsock -n "__fish_ringsock_needs_command" -s V -l version -d 'Print version'
complete -c ringsock -n "__fish_ringsock_needs_command" -f -a "proxy" -d 'Forward every connection to TARGET (a drop-in for systemd-socket-proxyd)'
complete -c ringsock -n "__fish_ringsock_needs_command" -f -a "serve" -d 'Serve the aptly-compatible API, metrics and a mirror tree over HTTP/1.1'
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l connect-timeout -d 'Give up connecting to TARGET after this long and close the client' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l half-close-timeout -d 'Cut a connection that one side half-closed once nothing moved on it for this long (infinity: never)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l idle-timeout -d 'Cut (RST both sides) a connection on which no byte moved either way for this long' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -s p -l proxy-protocol -d 'Send a PROXY protocol header (v1, as systemd-socket-proxyd\'s -p, or v2) naming the client to TARGET before any of its bytes' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l metrics -d 'Answer Prometheus metrics on ADDR (HOST:PORT, /path, @name); an activated socket named `metrics` does the same' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l listen -d 'Listen on ADDR as well as on any activated sockets: HOST:PORT, [V6]:PORT, PORT, /path or @name (repeatable)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l threads -d 'Worker threads [default: the CPUs this process may use]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -s c -l connections-max -d 'Maximum simultaneous connections; more wait in the listen backlog [default: 16384, or fewer if the open file limit cannot hold that many]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l exit-idle-time -d 'Exit once no connection was open for this long (e.g. 30s, 5min, infinity)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l shutdown-timeout -d 'On SIGTERM/SIGINT, how long open connections may take to finish' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l log-level -d 'error, warning, info or debug [default: $RINGSOCK_LOG_LEVEL, $SYSTEMD_LOG_LEVEL, info]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l proxy-protocol-from -d 'Connections from ADDR[/LEN] (a load balancer) start with a PROXY protocol v1 or v2 header naming the real client; one without a valid header within 3 s is closed (repeatable)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l proxy-protocol-on -d 'Every connection on the activated socket named NAME (FileDescriptorName=) starts with a PROXY protocol header, whoever the peer (repeatable)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l per-client-connections -d 'At most N connections at once from one client address range (the client a PROXY header names, if any); more are closed as soon as they are accepted [default: no limit]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l per-client-ipv4-prefix -d 'The IPv4 prefix length that makes one client for --per-client-connections (e.g. 29)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l per-client-ipv6-prefix -d 'The IPv6 prefix length that makes one client for --per-client-connections (e.g. 64)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -l keepalive -d 'Turn on TCP keepalive (probes after 60 s idle, every 10 s, 6 of them) on client and TCP target sockets, so a peer that vanished is noticed'
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ringsock -n "__fish_ringsock_using_subcommand proxy" -s V -l version -d 'Print version'
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l root -d 'Directory to serve (e.g. aptly\'s rootDir/public); without it only the API answers' -r -F
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l header-timeout -d 'Close a client that has not sent a full request head within this long (408)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l keepalive-timeout -d 'Close an idle keep-alive connection after this long' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l io-threads -d 'Most threads opening and reading files that are not in the page cache (nginx\'s `aio threads`); cached files never wait for one' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l per-client-rate -d 'At most R requests a second from one client address range (prefixes as for --per-client-connections); more are answered 429 with Retry-After [default: no limit]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l per-client-burst -d 'Requests a client may make at once above --per-client-rate [default: R]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l access-log -d 'Write an access log line per response (nginx\'s combined format plus the request time) to PATH, or `-` for standard error; SIGUSR1 reopens it (logrotate)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l route -d 'Pass requests whose path starts with PREFIX to the HTTP server at TARGET (repeatable; the longest prefix wins)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l route-allow -d 'Only clients in CIDR may use the route PREFIX (repeatable); others get 403' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l route-auth -d 'Only users of the htpasswd FILE may use the route PREFIX: HTTP Basic, 401 without the right credentials' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l route-max-body -d 'The largest request body a route passes on; larger ones get 413 [default: 2g]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l route-timeout -d 'How long a route\'s backend may take to accept a connection, and to start its answer (504 after)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l listen -d 'Listen on ADDR as well as on any activated sockets: HOST:PORT, [V6]:PORT, PORT, /path or @name (repeatable)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l threads -d 'Worker threads [default: the CPUs this process may use]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -s c -l connections-max -d 'Maximum simultaneous connections; more wait in the listen backlog [default: 16384, or fewer if the open file limit cannot hold that many]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l exit-idle-time -d 'Exit once no connection was open for this long (e.g. 30s, 5min, infinity)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l shutdown-timeout -d 'On SIGTERM/SIGINT, how long open connections may take to finish' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l log-level -d 'error, warning, info or debug [default: $RINGSOCK_LOG_LEVEL, $SYSTEMD_LOG_LEVEL, info]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l proxy-protocol-from -d 'Connections from ADDR[/LEN] (a load balancer) start with a PROXY protocol v1 or v2 header naming the real client; one without a valid header within 3 s is closed (repeatable)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l proxy-protocol-on -d 'Every connection on the activated socket named NAME (FileDescriptorName=) starts with a PROXY protocol header, whoever the peer (repeatable)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l per-client-connections -d 'At most N connections at once from one client address range (the client a PROXY header names, if any); more are closed as soon as they are accepted [default: no limit]' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l per-client-ipv4-prefix -d 'The IPv4 prefix length that makes one client for --per-client-connections (e.g. 29)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l per-client-ipv6-prefix -d 'The IPv6 prefix length that makes one client for --per-client-connections (e.g. 64)' -r
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l follow-symlinks -d 'Serve symlinks that point outside --root'
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -l autoindex -d 'List directories as HTML instead of answering 403'
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ringsock -n "__fish_ringsock_using_subcommand serve" -s V -l version -d 'Print version'
