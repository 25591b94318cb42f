// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ITokenReceiver} from "./ReentrantToken.sol";

/**
 * @title Reenterer (test only)
 * @notice An attacker account: runs arbitrary calls as itself and, when it receives tokens with the hook armed,
 * calls `target` again with `data` once. It records the outcome instead of reverting, so a test can see
 * whether the reentrant call was refused and by which error while the outer call still completes.
 */
contract Reenterer is ITokenReceiver {
    address private _target;
    bytes private _data;
    bool private _armed;

    /// @notice Whether the last reentrant call succeeded, and what it returned (the revert data otherwise).
    bool public lastSuccess;
    bytes public lastResult;
    uint256 public reentries;

    /// @notice Calls `target` with `data` as this contract; bubbles up a revert.
    function execute(address target, bytes calldata data) external returns (bytes memory result) {
        bool ok;
        (ok, result) = target.call(data);
        if (!ok) {
            assembly {
                revert(add(result, 32), mload(result))
            }
        }
    }

    /// @notice On the next token receipt, call `target` with `data`.
    function arm(address target, bytes calldata data) external {
        _target = target;
        _data = data;
        _armed = true;
    }

    /// @notice The token hook: performs the armed reentrant call once and records its outcome.
    function onTokenReceived(address, uint256) external {
        if (!_armed) return;
        _armed = false;
        reentries += 1;
        (lastSuccess, lastResult) = _target.call(_data);
    }
}
