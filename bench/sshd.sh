# Sourced by bench/run.sh and bench/ssh-compare.sh: an sshd of the benchmark's own on
# 127.0.0.1, for the rows over ssh.
#
# start_sshd DIR: makes host and user keys in DIR (root's key DIR/key is allowed only
# for this sshd), DIR/known_hosts for the client, starts sshd on a free port and
# waits until it listens. Sets SSH_PORT and SSHD_PID (the caller kills it at exit).
start_sshd() {
    local dir=$1
    mkdir -p "$dir" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/key"
    cp "$dir/key.pub" "$dir/authorized_keys"
    SSH_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$dir/sshd_config" <<CFG
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $dir/host
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel ERROR
CFG
    echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1-2 "$dir/host.pub")" >"$dir/known_hosts"
    /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" &
    SSHD_PID=$!
    for _ in $(seq 100); do
        if (echo >"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null; then break; fi
        sleep 0.1
    done
}
