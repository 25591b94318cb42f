// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";

/// @notice Receives the ERC-777-style hook of {ReentrantToken}.
interface ITokenReceiver {
    function onTokenReceived(address from, uint256 amount) external;
}

/**
 * @title ReentrantToken (test only)
 * @notice An ERC-20 that calls `onTokenReceived` on one chosen receiver whenever it receives tokens, the way
 * ERC-777 hooks or a malicious token would: it hands control to an attacker in the middle of a transfer.
 */
contract ReentrantToken is ERC20, ERC20Burnable {
    address private _hooked;

    /// @notice Mints `supply` to `holder`.
    constructor(address holder, uint256 supply) ERC20("Reentrant", "REE") {
        _mint(holder, supply);
    }

    /// @notice Calls back `receiver` on every transfer to it (zero address: no hook).
    function setHookedReceiver(address receiver) external {
        _hooked = receiver;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (to != address(0) && to == _hooked) ITokenReceiver(to).onTokenReceived(from, value);
    }
}
